"""The cases the CUDA kernels are checked on, against the NumPy reference.

Plain data (no Numba import), so pytest can name one test per case while a
single simulator subprocess (``check_simulator.py``) runs them all.  Shapes
are tiny: the simulator runs every GPU thread as a Python thread.

Each case: (name, input shape, ...arguments).  Every kernel case runs in
float32 and float64.
"""

CONV = [  # im2col and col2im, both column layouts; padding is (top, bottom, left, right)
    ("conv_3x3_pad1", (2, 3, 4, 4), dict(kernel_size=(3, 3), stride=(1, 1),
                                          padding=(1, 1, 1, 1), dilation=(1, 1))),
    ("conv_stride_above_kernel", (1, 2, 7, 6), dict(kernel_size=(2, 2), stride=(3, 3),
                                                    padding=(0, 0, 0, 0), dilation=(1, 1))),
    ("conv_padding_above_half_kernel", (1, 1, 3, 3), dict(kernel_size=(3, 3), stride=(1, 1),
                                                          padding=(2, 3, 3, 2),
                                                          dilation=(1, 1))),
    ("conv_dilated_strided", (1, 2, 7, 7), dict(kernel_size=(3, 3), stride=(2, 2),
                                                padding=(2, 2, 2, 2), dilation=(2, 2))),
    ("conv_1x1_output", (2, 2, 3, 3), dict(kernel_size=(3, 3), stride=(1, 1),
                                           padding=(0, 0, 0, 0), dilation=(1, 1))),
    ("conv_1x1_kernel_batch1", (1, 3, 4, 4), dict(kernel_size=(1, 1), stride=(2, 2),
                                                  padding=(0, 0, 0, 0), dilation=(1, 1))),
    ("conv_non_square", (2, 1, 4, 7), dict(kernel_size=(2, 3), stride=(1, 2),
                                           padding=(1, 0, 2, 1), dilation=(1, 2))),
]

MAXPOOL = [  # x values: "normal", "negative" (all < 0: -inf padding), "ties", "nan"
    ("max_overlapping", (2, 2, 5, 5), "normal", dict(kernel_size=(3, 3), stride=(1, 1),
                                                     padding=(1, 1))),
    ("max_stride_above_kernel", (1, 1, 7, 7), "normal", dict(kernel_size=(2, 2),
                                                             stride=(3, 3), padding=(0, 0))),
    ("max_negative_input_padded", (1, 2, 4, 4), "negative", dict(kernel_size=(3, 3),
                                                                 stride=(2, 2),
                                                                 padding=(1, 1))),
    ("max_ties_first_in_window", (2, 2, 5, 5), "ties", dict(kernel_size=(3, 3),
                                                            stride=(1, 1), padding=(1, 1))),
    ("max_nan_wins", (1, 1, 4, 4), "nan", dict(kernel_size=(2, 2), stride=(1, 1),
                                               padding=(0, 0))),
    ("max_ceil_mode", (1, 1, 5, 5), "normal", dict(kernel_size=(2, 2), stride=(2, 2),
                                                   padding=(0, 0), ceil_mode=True)),
    ("max_dilated", (1, 1, 7, 6), "normal", dict(kernel_size=(3, 2), stride=(1, 2),
                                                 padding=(1, 1), dilation=(2, 3))),
    ("max_1x1_output_batch1", (1, 3, 3, 3), "normal", dict(kernel_size=(3, 3),
                                                           stride=(1, 1), padding=(0, 0))),
]

AVGPOOL = [
    ("avg_count_include_pad", (2, 2, 5, 5), dict(kernel_size=(3, 3), stride=(2, 2),
                                                 padding=(1, 1), count_include_pad=True)),
    ("avg_exclude_pad", (2, 2, 5, 5), dict(kernel_size=(3, 3), stride=(2, 2),
                                           padding=(1, 1), count_include_pad=False)),
    ("avg_overlapping_exclude_pad", (1, 1, 4, 5), dict(kernel_size=(3, 3), stride=(1, 1),
                                                       padding=(1, 1),
                                                       count_include_pad=False)),
    ("avg_ceil_mode_past_padding", (1, 1, 6, 6), dict(kernel_size=(3, 3), stride=(2, 2),
                                                      padding=(1, 1), ceil_mode=True)),
    ("avg_divisor_override", (1, 2, 4, 4), dict(kernel_size=(2, 2), stride=(1, 1),
                                                padding=(1, 1), divisor_override=5)),
    ("avg_stride_above_kernel", (1, 1, 7, 7), dict(kernel_size=(2, 2), stride=(3, 3),
                                                   padding=(0, 0))),
    ("avg_1x1_output_batch1", (1, 3, 2, 3), dict(kernel_size=(2, 3), stride=(1, 1),
                                                 padding=(0, 0))),
]

BATCHNORM = [  # (name, x shape, offset added to x: a large one tests the two-pass variance)
    ("bn_2d", (5, 3), 0.0),
    ("bn_3d", (2, 3, 5), 0.0),
    ("bn_4d", (2, 3, 3, 3), 0.0),
    ("bn_batch1", (1, 2, 3, 3), 0.0),
    ("bn_large_mean", (4, 2, 2, 2), 1000.0),
]

# Whole ops, through the kernels interface as the engine calls it: a small
# network (grouped/strided conv, BN 2-D and 1-D, max and avg pooling) trained one
# step.  float64 only: the calls are the same in both dtypes (the kernel cases
# above check float32), and through a few layers and batch norm over 2 examples
# float32 rounding differences grow to 1e-3, which would blur a tolerance.
NETWORK = [("ops_small_network", (2, 1, 6, 6))]
NETWORK_DTYPES = ("float64",)

DTYPES = ("float32", "float64")


def case_ids():
    """Every case name, as the checker reports them: '<case>[<dtype>]'."""
    names = [c[0] for c in CONV + MAXPOOL + AVGPOOL + BATCHNORM]
    return ([f"{name}[{dtype}]" for name in names for dtype in DTYPES]
            + [f"{c[0]}[{dtype}]" for c in NETWORK for dtype in NETWORK_DTYPES])
