// Host-side front end of the attention op, shared by the CPU and CUDA backends: argument checks,
// the operand views (unit stride along D), output allocation and the kernel parameter structs.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "torchcv_ext/attention.h"
#include "torchcv_ext/checks.h"

namespace torchcv_ext::attn {

inline void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->dim() == 4, op, ": ", name,
                " must be 4-D (batch, heads, seq_len, head_dim), got ", t->dim(), " dims of shape ",
                t->sizes());
  }
  check_float_dtype(op, "q", q);
  check_same_device_dtype(op, "k", q, k);
  check_same_device_dtype(op, "v", q, v);
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->size(0) == q.size(0) && t->size(1) == q.size(1) && t->size(3) == q.size(3), op,
                ": ", name, " of shape ", t->sizes(), " does not match q of shape ", q.sizes(),
                " in batch, heads or head_dim");
  }
  TORCH_CHECK(k.size(2) == v.size(2), op, ": k and v must have the same seq_len, got ", k.size(2),
              " and ", v.size(2));
  TORCH_CHECK(q.size(3) > 0, op, ": head_dim must be positive, got shape ", q.sizes());
}

inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  check_same_device_dtype(op, name, ref, t);
  TORCH_CHECK(t.sizes() == ref.sizes(), op, ": ", name, " must have shape ", ref.sizes(), ", got ",
              t.sizes());
}

// dtype of lse: float32, float64 for float64 inputs.
inline at::ScalarType stat_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline double softmax_scale(const at::Tensor& q, std::optional<double> scale) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
}

// Unit stride along D (and, with align > 0, every row and the base aligned to `align` bytes, for
// vector loads); otherwise a contiguous copy.
inline at::Tensor rows_ready(const at::Tensor& t, int64_t align = 0) {
  bool ok = t.size(3) <= 1 || t.stride(3) == 1;
  if (ok && align > 0) {
    const int64_t e = t.element_size();
    ok = reinterpret_cast<std::uintptr_t>(t.data_ptr()) % align == 0 &&
         (t.stride(0) * e) % align == 0 && (t.stride(1) * e) % align == 0 &&
         (t.stride(2) * e) % align == 0;
  }
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

// out, dq, dk, dv: (B, H, N, D) stored as (B, N, H, D) (like SDPA's flash backend), so the
// multi-head merge out.transpose(1, 2).reshape(B, N, H * D) is free. The Python fake kernels
// (torchcv_ext/ops/attention.py: _bnhd_empty) use the same layout.
inline at::Tensor empty_bnhd(const at::Tensor& like) {
  return at::empty({like.size(0), like.size(2), like.size(1), like.size(3)}, like.options())
      .transpose(1, 2);
}

template <typename T>
Operand<T> operand(const at::Tensor& t) {
  return Operand<T>{reinterpret_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// Forward front end: checked inputs (rows ready for the kernels), the outputs and the scale. The
// backend then builds FwdParams<T> for its storage type T of q's dtype (fwd_params<T>).
struct FwdSetup {
  at::Tensor q, k, v, out, lse;
  double scale;
};

inline FwdSetup forward_setup(const char* op, const at::Tensor& q_in, const at::Tensor& k_in,
                              const at::Tensor& v_in, std::optional<double> scale, int64_t align) {
  check_inputs(op, q_in, k_in, v_in);
  FwdSetup s;
  s.scale = softmax_scale(q_in, scale);
  TORCH_CHECK(std::isfinite(s.scale), op, ": scale must be finite, got ", s.scale);
  s.q = rows_ready(q_in, align);
  s.k = rows_ready(k_in, align);
  s.v = rows_ready(v_in, align);
  s.out = empty_bnhd(q_in);
  s.lse = at::empty({q_in.size(0), q_in.size(1), q_in.size(2)}, q_in.options().dtype(stat_dtype(q_in)));
  return s;
}

// Degenerate shapes, handled without a kernel (true when done): no keys gives out = 0 and
// lse = -inf (the reference's convention); no queries / batch / heads gives empty outputs.
inline bool empty_forward(FwdSetup& s) {
  if (s.k.size(2) == 0) {
    s.out.zero_();
    s.lse.fill_(-INFINITY);
    return true;
  }
  return s.out.numel() == 0;
}

template <typename T>
FwdParams<T> fwd_params(const FwdSetup& s) {
  FwdParams<T> p;
  p.q = operand<const T>(s.q);
  p.k = operand<const T>(s.k);
  p.v = operand<const T>(s.v);
  p.o = operand<T>(s.out);
  p.lse = s.lse.data_ptr<stat_t<T>>();
  p.B = s.q.size(0);
  p.H = s.q.size(1);
  p.Nq = s.q.size(2);
  p.Nk = s.k.size(2);
  p.D = s.q.size(3);
  p.scale = s.scale;
  return p;
}

// Backward front end: checked inputs, the Delta workspace and the gradients (dq, dk, dv in the
// layout of out).
struct BwdSetup {
  at::Tensor dout, q, k, v, out, lse, delta, dq, dk, dv;
  double scale;
};

inline BwdSetup backward_setup(const char* op, const at::Tensor& dout, const at::Tensor& q,
                               const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                               const at::Tensor& lse, std::optional<double> scale, int64_t align) {
  check_inputs(op, q, k, v);
  check_like(op, "grad_out", dout, q);
  check_like(op, "out", out, q);
  TORCH_CHECK(lse.device() == q.device() && lse.scalar_type() == stat_dtype(q), op,
              ": lse must be a ", stat_dtype(q), " tensor on ", q.device(), ", got ",
              lse.scalar_type(), " on ", lse.device());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                  lse.size(2) == q.size(2),
              op, ": lse must have shape (", q.size(0), ", ", q.size(1), ", ", q.size(2), "), got ",
              lse.sizes());
  BwdSetup s;
  s.scale = softmax_scale(q, scale);
  TORCH_CHECK(std::isfinite(s.scale), op, ": scale must be finite, got ", s.scale);
  s.dout = rows_ready(dout, align);
  s.q = rows_ready(q, align);
  s.k = rows_ready(k, align);
  s.v = rows_ready(v, align);
  s.out = rows_ready(out, align);
  s.lse = lse.contiguous();
  s.delta = at::empty_like(s.lse);
  s.dq = empty_bnhd(q);
  s.dk = empty_bnhd(k);
  s.dv = empty_bnhd(v);
  return s;
}

// Degenerate shapes (true when done): any empty operand gives zero gradients.
inline bool empty_backward(BwdSetup& s) {
  if (s.q.numel() != 0 && s.k.numel() != 0) return false;
  s.dq.zero_();
  s.dk.zero_();
  s.dv.zero_();
  return true;
}

template <typename T>
BwdParams<T> bwd_params(const BwdSetup& s) {
  BwdParams<T> p;
  p.q = operand<const T>(s.q);
  p.k = operand<const T>(s.k);
  p.v = operand<const T>(s.v);
  p.o = operand<const T>(s.out);
  p.dout = operand<const T>(s.dout);
  p.dq = operand<T>(s.dq);
  p.dk = operand<T>(s.dk);
  p.dv = operand<T>(s.dv);
  p.lse = s.lse.data_ptr<stat_t<T>>();
  p.delta = s.delta.data_ptr<stat_t<T>>();
  p.B = s.q.size(0);
  p.H = s.q.size(1);
  p.Nq = s.q.size(2);
  p.Nk = s.k.size(2);
  p.D = s.q.size(3);
  p.scale = s.scale;
  return p;
}

}  // namespace torchcv_ext::attn
