"""The suite's promise: each test really runs under the kernel set it is labelled with."""
import kernels


def test_the_labelled_kernel_set_is_the_active_one(kernel_set):
    assert kernels.active == kernel_set
