"""Lane-level numpy emulation of the tensor-core attention kernels (csrc/cuda/attention_mma.cuh:
fwd_mma_kernel, dkdv_mma_kernel with and without its atomic dQ, dq_mma_kernel) for checking their
fragment index math on a machine without a GPU.

    python python_tests/emulate_attention_mma.py

Not a test of the compiled kernels (those run in python_tests/test_attention.py on a GPU): the
kernels' shared-memory addressing, fragment loads (32-bit reads, ldmatrix.x4.trans), accumulator ->
operand conversion, masking and online-softmax bookkeeping are transcribed line by line, and
mma.m16n8k16 / ldmatrix are emulated with the PTX ISA fragment layouts. Shared memory starts as NaN,
so reading an element no thread stored (padding, an unloaded row) poisons the result, and numpy
bounds-checks every index. Prints the max error of out, lse, dq, dk, dv vs float64; exits 1 when
one exceeds fp16 rounding. Keep it in sync with attention_mma.cuh when the kernels change.
"""
import numpy as np, math, sys
LOG2E = 1.4426950408889634; LN2 = 0.6931471805599453
lanes = np.arange(32); G = lanes // 4; Tt = lanes % 4
def rnd(x): return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)

def lds32(s, idx):  # idx: array (32,) -> (32, 2)
    return np.stack([s[idx], s[idx + 1]], -1)

def load_a(s, ld, r0, c0):
    return np.stack([lds32(s, (r0 + G) * ld + c0 + 2 * Tt), lds32(s, (r0 + G + 8) * ld + c0 + 2 * Tt),
                     lds32(s, (r0 + G) * ld + c0 + 2 * Tt + 8), lds32(s, (r0 + G + 8) * ld + c0 + 2 * Tt + 8)], 1)

def mma(c, a, b0, b1):
    """c: (32,4) float32, a: (32,4,2) b0,b1: (32,2); PTX layouts."""
    A = np.zeros((16, 16)); B = np.zeros((16, 8)); C = np.zeros((16, 8))
    for ln in range(32):
        g, t = ln // 4, ln % 4
        for i in range(2):
            A[g, 2 * t + i] = a[ln, 0, i]; A[g + 8, 2 * t + i] = a[ln, 1, i]
            A[g, 2 * t + 8 + i] = a[ln, 2, i]; A[g + 8, 2 * t + 8 + i] = a[ln, 3, i]
            B[2 * t + i, g] = b0[ln, i]; B[2 * t + 8 + i, g] = b1[ln, i]
            C[g, 2 * t + i] = c[ln, i]; C[g + 8, 2 * t + i] = c[ln, 2 + i]
    D = A @ B + C
    out = np.zeros((32, 4), np.float32)
    for ln in range(32):
        g, t = ln // 4, ln % 4
        for i in range(2):
            out[ln, i] = D[g, 2 * t + i]; out[ln, 2 + i] = D[g + 8, 2 * t + i]
    return out

def acc_to_a(c, j):  # c: (NT, 32, 4)
    return rnd(np.stack([np.stack([c[2*j][:, 0], c[2*j][:, 1]], -1), np.stack([c[2*j][:, 2], c[2*j][:, 3]], -1),
                         np.stack([c[2*j+1][:, 0], c[2*j+1][:, 1]], -1), np.stack([c[2*j+1][:, 2], c[2*j+1][:, 3]], -1)], 1))

def ldsm_b_trans(s, ld, k0, n0):
    """ldmatrix.x4.trans: lane l supplies the address of row (l % 8) of matrix l // 8; with .trans
    register i of lane 4g+t = (M_i[2t][g], M_i[2t+1][g])."""
    addr = [(k0 + (l & 7) + ((l >> 3) & 1) * 8) * ld + n0 + (l >> 4) * 8 for l in range(32)]
    out = np.zeros((32, 4, 2), np.float32)
    for l in range(32):
        g, t = l // 4, l % 4
        for i in range(4):
            for j in range(2):
                out[l, i, j] = s[addr[8 * i + 2 * t + j] + g]
    return out

def mma_ab(c, a_of, s, ld, NT, KSTEPS):
    assert NT % 2 == 0
    for kk in range(KSTEPS):
        a = a_of(kk)
        for nt in range(0, NT, 2):
            b = ldsm_b_trans(s, ld, kk * 16, nt * 8)
            c[nt] = mma(c[nt], a, b[:, 0], b[:, 1])
            c[nt + 1] = mma(c[nt + 1], a, b[:, 2], b[:, 3])

def mma_abt(c, a_of, s, ld, NT, KSTEPS):
    for kk in range(KSTEPS):
        a = a_of(kk)
        for nt in range(NT):
            row = (nt * 8 + G) * ld + kk * 16 + 2 * Tt
            c[nt] = mma(c[nt], a, lds32(s, row), lds32(s, row + 8))

def quad(x, op):
    x = x.copy()
    for off in (1, 2):
        x = op(x, x[lanes ^ off])
    return x

def load_tile(X, n0, n, rows, D, dst, lds, dst_t, ldt):
    # X: (N, D) operand of one (b, h)
    for r in range(rows):
        val = X[n0 + r] if n0 + r < n else np.zeros(D, np.float32)
        if dst is not None: dst[r * lds: r * lds + D] = val
        if dst_t is not None:
            for d in range(D): dst_t[d * ldt + r] = val[d]

def fwd(Q, K, V, scale, D):
    BM = BN = 64; LDS = D + 8; Nq, Nk = len(Q), len(K)
    O = np.full((Nq, D), np.nan, np.float32); LSE = np.full(Nq, np.nan, np.float32)
    sl2 = np.float32(scale * LOG2E)
    for qt in range(math.ceil(Nq / BM)):
        q0 = qt * BM
        sQ = np.full(BM * LDS, np.nan, np.float32); sK = np.full(BN * LDS, np.nan, np.float32); sV = np.full(BN * LDS, np.nan, np.float32)
        load_tile(Q, q0, Nq, BM, D, sQ, LDS, None, 0)
        st = []
        for w in range(4):
            st.append(dict(qf=[load_a(sQ, LDS, w * 16, kk * 16) for kk in range(D // 16)], o=np.zeros((D // 8, 32, 4), np.float32),
                           m=np.full((2, 32), -np.inf, np.float32), l=np.zeros((2, 32), np.float32)))
        for kt in range(math.ceil(Nk / BN)):
            k0 = kt * BN
            load_tile(K, k0, Nk, BN, D, sK, LDS, None, 0); load_tile(V, k0, Nk, BN, D, sV, LDS, None, 0)
            for w in range(4):
                S = st[w]; s = np.zeros((BN // 8, 32, 4), np.float32)
                mma_abt(s, lambda kk: S['qf'][kk], sK, LDS, BN // 8, D // 16)
                tmax = np.full((2, 32), -np.inf, np.float32)
                for nt in range(BN // 8):
                    for e in range(4):
                        col = k0 + nt * 8 + 2 * Tt + (e & 1)
                        s[nt][:, e] = np.where(col < Nk, s[nt][:, e] * sl2, -np.inf)
                        tmax[e >> 1] = np.maximum(tmax[e >> 1], s[nt][:, e])
                alpha = np.zeros((2, 32), np.float32)
                for i in range(2):
                    tm = quad(tmax[i], np.maximum); mn = np.maximum(S['m'][i], tm)
                    alpha[i] = np.where(S['m'][i] == -np.inf, 0, np.exp2(S['m'][i] - mn)); S['m'][i] = mn
                rs = np.zeros((2, 32), np.float32)
                for nt in range(BN // 8):
                    for e in range(4):
                        m = S['m'][e >> 1]
                        s[nt][:, e] = np.where(m == -np.inf, 0, np.exp2(s[nt][:, e] - m)); rs[e >> 1] += s[nt][:, e]
                for i in range(2): S['l'][i] = alpha[i] * S['l'][i] + rs[i]
                for nt in range(D // 8):
                    S['o'][nt][:, 0:2] *= alpha[0][:, None]; S['o'][nt][:, 2:4] *= alpha[1][:, None]
                mma_ab(S['o'], lambda kk: acc_to_a(s, kk), sV, LDS, D // 8, BN // 16)
        for w in range(4):
            S = st[w]
            for i in range(2):
                lsum = quad(S['l'][i], np.add)
                for ln in range(32):
                    r = q0 + w * 16 + G[ln] + 8 * i
                    if r < Nq:
                        inv = 1 / lsum[ln] if lsum[ln] > 0 else 0
                        for nt in range(D // 8):
                            O[r, nt * 8 + 2 * Tt[ln]] = S['o'][nt][ln, 2 * i] * inv
                            O[r, nt * 8 + 2 * Tt[ln] + 1] = S['o'][nt][ln, 2 * i + 1] * inv
                        if Tt[ln] == 0: LSE[r] = (S['m'][i][ln] + np.log2(lsum[ln])) * LN2
    return rnd(O), LSE

def dkdv(Q, K, V, dO, LSE, Delta, scale, D, atomic_dq=False):
    """dkdv_mma_kernel; with atomic_dq (kAtomicDq) also dQ: dS goes through shared memory and each
    warp adds its slice of dS K into a float32 accumulator (the atomicAdds), scaled at the end
    (dq_convert_kernel)."""
    BN = 64; BMQ = 32 if D >= 128 else 64; LDS = D + 8; Nq, Nk = len(Q), len(K)
    dK = np.full((Nk, D), np.nan, np.float32); dV = np.full((Nk, D), np.nan, np.float32)
    LDSS = BN + 8; RB = BMQ // 16; CS = 4 // RB; DC = D // CS
    dQacc = np.zeros((Nq, D), np.float32)
    sl2 = np.float32(scale * LOG2E)
    for kt in range(math.ceil(Nk / BN)):
        k0 = kt * BN
        sK = np.full(BN * LDS, np.nan, np.float32); sV = sK.copy()
        sQbuf = np.full(2 * BMQ * LDS, np.nan, np.float32); sdObuf = sQbuf.copy()
        sLsebuf = np.full(2 * BMQ, np.nan, np.float32); sDeltabuf = sLsebuf.copy()
        sdS = np.full(BMQ * LDSS, np.nan, np.float32)
        load_tile(K, k0, Nk, BN, D, sK, LDS, None, 0); load_tile(V, k0, Nk, BN, D, sV, LDS, None, 0)
        acc = [dict(dk=np.zeros((D // 8, 32, 4), np.float32), dv=np.zeros((D // 8, 32, 4), np.float32)) for _ in range(4)]

        def stage(qt, buf):  # stage_query_tile into buffer `buf`
            q0 = qt * BMQ
            sq = sQbuf[buf * BMQ * LDS:(buf + 1) * BMQ * LDS]; sd = sdObuf[buf * BMQ * LDS:(buf + 1) * BMQ * LDS]
            load_tile(Q, q0, Nq, BMQ, D, sq, LDS, None, 0); load_tile(dO, q0, Nq, BMQ, D, sd, LDS, None, 0)
            for r in range(BMQ):
                ok = q0 + r < Nq
                sLsebuf[buf * BMQ + r] = LSE[q0 + r] * LOG2E if ok else np.inf
                sDeltabuf[buf * BMQ + r] = Delta[q0 + r] if ok else 0
        n_qt = math.ceil(Nq / BMQ)
        stage(0, 0)
        for qt in range(n_qt):
            cur, nxt = qt & 1, (qt & 1) ^ 1
            if qt + 1 < n_qt:
                stage(qt + 1, nxt)
            sQ = sQbuf[cur * BMQ * LDS:(cur + 1) * BMQ * LDS]; sdO = sdObuf[cur * BMQ * LDS:(cur + 1) * BMQ * LDS]
            sLse = sLsebuf[cur * BMQ:(cur + 1) * BMQ]; sDelta = sDeltabuf[cur * BMQ:(cur + 1) * BMQ]
            for w in range(4):
                key_ok = [k0 + w * 16 + G + 8 * i < Nk for i in range(2)]
                s = np.zeros((BMQ // 8, 32, 4), np.float32)
                mma_abt(s, lambda kk: load_a(sK, LDS, w * 16, kk * 16), sQ, LDS, BMQ // 8, D // 16)
                for nt in range(BMQ // 8):
                    for e in range(4):
                        qc = nt * 8 + 2 * Tt + (e & 1)
                        s[nt][:, e] = np.where(key_ok[e >> 1], np.exp2(s[nt][:, e] * sl2 - sLse[qc]), 0)
                mma_ab(acc[w]['dv'], lambda kk: acc_to_a(s, kk), sdO, LDS, D // 8, BMQ // 16)
                dp = np.zeros((BMQ // 8, 32, 4), np.float32)
                mma_abt(dp, lambda kk: load_a(sV, LDS, w * 16, kk * 16), sdO, LDS, BMQ // 8, D // 16)
                for nt in range(BMQ // 8):
                    for e in range(4):
                        qc = nt * 8 + 2 * Tt + (e & 1)
                        dp[nt][:, e] = s[nt][:, e] * (dp[nt][:, e] - sDelta[qc])
                mma_ab(acc[w]['dk'], lambda kk: acc_to_a(dp, kk), sQ, LDS, D // 8, BMQ // 16)
                if atomic_dq:  # sdS[query][key] = dS (rounded like the MMA operands)
                    for nt in range(BMQ // 8):
                        for e in range(4):
                            qc = nt * 8 + 2 * Tt + (e & 1); key = w * 16 + G + 8 * (e >> 1)
                            sdS[qc * LDSS + key] = rnd(dp[nt][:, e])
            if atomic_dq:  # after the barrier: warp w adds rows [16 rb, +16) x cols [DC cs, +DC)
                for w in range(4):
                    rb, cs = w % RB, w // RB
                    dqa = np.zeros((DC // 8, 32, 4), np.float32)
                    mma_ab(dqa, lambda kk: load_a(sdS, LDSS, rb * 16, kk * 16), sK[cs * DC:], LDS, DC // 8, BN // 16)
                    for nt in range(DC // 8):
                        for e in range(4):
                            row = qt * BMQ + rb * 16 + G + 8 * (e >> 1); col = cs * DC + nt * 8 + 2 * Tt + (e & 1)
                            ok = row < Nq
                            np.add.at(dQacc, (row[ok], col[ok]), dqa[nt][ok, e])
        for w in range(4):
            for i in range(2):
                for ln in range(32):
                    key = k0 + w * 16 + G[ln] + 8 * i
                    if key < Nk:
                        for nt in range(D // 8):
                            for j in range(2):
                                dK[key, nt * 8 + 2 * Tt[ln] + j] = acc[w]['dk'][nt][ln, 2 * i + j] * scale
                                dV[key, nt * 8 + 2 * Tt[ln] + j] = acc[w]['dv'][nt][ln, 2 * i + j]
    if atomic_dq:
        return rnd(dK), rnd(dV), rnd(dQacc * np.float32(scale))
    return rnd(dK), rnd(dV)

def dq(Q, K, V, dO, LSE, Delta, scale, D):
    BM = 64; BN = 32 if D >= 128 else 64; LDS = D + 8; Nq, Nk = len(Q), len(K)
    dQ = np.full((Nq, D), np.nan, np.float32); sl2 = np.float32(scale * LOG2E)
    for qt in range(math.ceil(Nq / BM)):
        q0 = qt * BM
        sQ = np.full(BM * LDS, np.nan, np.float32); sdO = sQ.copy()
        sKbuf = np.full(2 * BN * LDS, np.nan, np.float32); sVbuf = sKbuf.copy()
        load_tile(Q, q0, Nq, BM, D, sQ, LDS, None, 0); load_tile(dO, q0, Nq, BM, D, sdO, LDS, None, 0)
        load_tile(K, 0, Nk, BN, D, sKbuf, LDS, None, 0); load_tile(V, 0, Nk, BN, D, sVbuf, LDS, None, 0)
        ws = []
        for w in range(4):
            r = [q0 + w * 16 + G + 8 * i for i in range(2)]
            lse2 = [np.where(ri < Nq, LSE[np.minimum(ri, Nq - 1)] * LOG2E, np.inf) for ri in r]
            de = [np.where(ri < Nq, Delta[np.minimum(ri, Nq - 1)], 0) for ri in r]
            ws.append(dict(lse2=lse2, de=de, dq=np.zeros((D // 8, 32, 4), np.float32)))
        n_kt = math.ceil(Nk / BN)
        for kt in range(n_kt):
            k0 = kt * BN
            cur, nxt = kt & 1, (kt & 1) ^ 1
            if kt + 1 < n_kt:
                load_tile(K, k0 + BN, Nk, BN, D, sKbuf[nxt * BN * LDS:(nxt + 1) * BN * LDS], LDS, None, 0)
                load_tile(V, k0 + BN, Nk, BN, D, sVbuf[nxt * BN * LDS:(nxt + 1) * BN * LDS], LDS, None, 0)
            sK = sKbuf[cur * BN * LDS:(cur + 1) * BN * LDS]; sV = sVbuf[cur * BN * LDS:(cur + 1) * BN * LDS]
            for w in range(4):
                W = ws[w]
                s = np.zeros((BN // 8, 32, 4), np.float32); dp = s.copy()
                mma_abt(s, lambda kk: load_a(sQ, LDS, w * 16, kk * 16), sK, LDS, BN // 8, D // 16)
                mma_abt(dp, lambda kk: load_a(sdO, LDS, w * 16, kk * 16), sV, LDS, BN // 8, D // 16)
                for nt in range(BN // 8):
                    for e in range(4):
                        col = k0 + nt * 8 + 2 * Tt + (e & 1)
                        x = np.where(col < Nk, s[nt][:, e] * sl2, -np.inf)
                        pr = np.exp2(x - W['lse2'][e >> 1])
                        s[nt][:, e] = pr * (dp[nt][:, e] - W['de'][e >> 1])
                mma_ab(W['dq'], lambda kk: acc_to_a(s, kk), sK, LDS, D // 8, BN // 16)
        for w in range(4):
            for i in range(2):
                for ln in range(32):
                    r = q0 + w * 16 + G[ln] + 8 * i
                    if r < Nq:
                        for nt in range(D // 8):
                            for j in range(2):
                                dQ[r, nt * 8 + 2 * Tt[ln] + j] = ws[w]['dq'][nt][ln, 2 * i + j] * scale
    return rnd(dQ)

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    worst = 0.0
    for (Nq, Nk, D) in [(70, 100, 32), (1, 1, 32), (65, 7, 64), (33, 130, 128), (200, 197, 64)]:
        Q, K, V, dO = (rnd(rng.standard_normal((n, D))) for n in (Nq, Nk, Nk, Nq))
        scale = 1 / math.sqrt(D)
        S = Q.astype(np.float64) @ K.T.astype(np.float64) * scale
        P = np.exp(S - S.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
        Oref = P @ V; LSEref = np.log(np.exp(S - S.max(1, keepdims=True)).sum(1)) + S.max(1)
        dV = P.T @ dO; dP = dO @ V.T; Dl = (dO * Oref).sum(1, keepdims=True); dS = P * (dP - Dl)
        dQr = dS @ K * scale; dKr = dS.T @ Q * scale
        O, LSE = fwd(Q, K, V, scale, D)
        Delta = (dO.astype(np.float32) * O).sum(1)
        dK_, dV_ = dkdv(Q, K, V, dO, LSE, Delta, scale, D)
        dQ_ = dq(Q, K, V, dO, LSE, Delta, scale, D)
        dKa, dVa, dQa = dkdv(Q, K, V, dO, LSE, Delta, scale, D, atomic_dq=True)
        err = lambda a, b: np.abs(a - b).max()
        errs = [err(O, Oref), err(dQ_, dQr), err(dK_, dKr), err(dV_, dV), err(dQa, dQr)]
        bad = any(np.isnan(x).any() for x in (O, LSE, dQ_, dK_, dV_, dQa))
        assert (dKa == dK_).all() and (dVa == dV_).all(), "atomic-dQ variant changed dK / dV"
        worst = max(worst, max(errs) if not bad else np.inf)
        print((Nq, Nk, D), "O %.2e LSE %.2e dQ %.2e dK %.2e dV %.2e dQ(atomic) %.2e" % (
              err(O, Oref), err(LSE, LSEref), err(dQ_, dQr), err(dK_, dKr), err(dV_, dV), err(dQa, dQr)),
              "nan" if bad else "")
    sys.exit(0 if worst < 1e-2 else 1)
