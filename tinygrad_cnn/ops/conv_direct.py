"""Direct convolution for thin layers: each output summed straight from the
input, with no column matrix.

``conv2d`` (``conv.py``) runs ``Conv2dDirect`` on the CPU where
``direct_suits`` says it pays: layers with few multiply-adds per output
pixel, such as LeNet's two, where im2col would copy the input into a
matrix KH·KW times its size only to feed products too thin (6 or 16 rows)
for the matrix-product library to run near its speed.  The sums are the kernels
``kernels.conv_direct_*`` (``kernels/conv_direct_numpy.py``, compiled in
``kernels/conv_direct_numba.py``).
"""
import kernels

from ..autograd import Function

# The most multiply-adds per output pixel, (C/groups)·KH·KW·O, at which the
# direct loops beat im2col and its matrix products on the CPU (where Winograd
# does not suit the layer: it needs fewer multiplications still).  Measured
# at batch 128-256, forward and backward, on 1 and 2 threads
# (benchmarks/results.md, "The direct convolution in blocks of channels"):
# direct won at 150 (LeNet's first convolution), 2400 (its second, 6·5·5·16)
# and 6400 (16 -> 16 channels, 5x5), and lost at 12800 (16 -> 32, 5x5).
DIRECT_MAX_MULTIPLY_ADDS = 6400


def direct_suits(x_shape, weight_shape, stride, dilation, groups):
    """Whether ``conv2d`` should run a CPU convolution as ``Conv2dDirect``:
    stride 1 (the compiled loops' case), one group, and at most
    ``DIRECT_MAX_MULTIPLY_ADDS`` multiply-adds per output pixel."""
    O, C, KH, KW = weight_shape
    return (tuple(stride) == (1, 1) and groups == 1
            and C * KH * KW * O <= DIRECT_MAX_MULTIPLY_ADDS)


class Conv2dDirect(Function):
    """y = W ⋆ x + b, each output summed directly (one group)::

        y[n, o, oh, ow] = b[o] + Σ_{c, i, j} W[o, c, i, j] · x_pad[n, c, oh·SH + i·DH,
                                                                     ow·SW + j·DW]
                                               kernels.conv_direct_forward

    Backward, the adjoint of each sum::

        dx = Σ_{o, i, j} W[o, c, i, j] · dy added back where it was read
                                               kernels.conv_direct_backward_input
        dW[o, c, i, j] = Σ_{n, oh, ow} dy[n, o, oh, ow] · x_pad[n, c, ...]
                                               kernels.conv_direct_backward_weight
        db = Σ_{n, oh, ow} dy                 with dW when both are wanted

    Saved for backward: x (for dW) and W (for dx), each only when that
    gradient is wanted.  No column matrix: im2col's would be KH·KW times x.
    """
    name = "Conv2d[direct]"

    def __init__(self, stride, padding, dilation, has_bias):
        # stride, dilation: (H, W) pairs; padding: (top, bottom, left, right)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.has_bias = has_bias

    def forward(self, x, W, b=None):
        need_x, need_W = self.needs_input_grad[:2]
        self.save_for_backward(x if need_W else None, W if need_x else None)
        self.x_shape, self.kernel_size = x.shape, W.shape[2:]
        # the bias is added as each output leaves the kernel's loop: no second pass
        return kernels.conv_direct_forward(x, W, self.stride, self.padding, self.dilation, b)

    def backward(self, gy):
        x, W = self.saved
        need_x, need_W = self.needs_input_grad[:2]
        need_b = self.has_bias and self.needs_input_grad[2]
        gx = gW = gb = None
        if need_x:
            gx = kernels.conv_direct_backward_input(gy, W, self.x_shape, self.stride,
                                                    self.padding, self.dilation)
        if need_W:     # db comes with dW: summed as the loops read gy (no pass of its own)
            result = kernels.conv_direct_backward_weight(gy, x, self.kernel_size, self.stride,
                                                         self.padding, self.dilation,
                                                         with_bias=need_b)
            gW, gb = result if need_b else (result, None)
        elif need_b:
            gb = gy.sum(axis=(0, 2, 3))
        return (gx, gW, gb) if self.has_bias else (gx, gW)
