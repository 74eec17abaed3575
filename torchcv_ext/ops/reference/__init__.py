"""Pure-PyTorch references of every op: the CPU fallback and the test oracle.

One module per op, named like the op (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu,
torchcv_ext/ops/<op>.py). Written for clarity, differentiable by autograd, any dtype/device.
"""
