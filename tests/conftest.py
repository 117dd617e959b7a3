import pytest

import kernels
import tinygrad_cnn as tc

# The 'cuda' runs carry the gpu marker, so -m "not gpu" leaves them out.
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.gpu)]
                     if tc.cuda.is_available() else [])


def pytest_addoption(parser):
    parser.addoption("--kernels", default=",".join(kernels.available()),
                     help="comma-separated kernel sets to run every test under "
                          f"(default: all of {kernels.available()})")


# Tests of code that calls no kernel (data, the Tensor core) run once, under the first set;
# so do the training-loop, checkpoint and CLI tests, whose logic is the same under every set,
# and the study tools': the docs' derivations (the kernel sets' agreement is tested in
# tests/kernels/), tracing, pictures and the examples (which choose their own set).
# The CUDA kernels' tests run in a subprocess (the simulator) or on CuPy arrays, which
# go to the GPU kernels whatever the CPU set, and the device tests call no kernel.
KERNEL_FREE = ("tests/data/", "tests/test_tensor.py", "tests/test_creation.py",
               "tests/test_train.py", "tests/test_checkpoint.py", "tests/test_cli.py",
               "tests/docs/", "tests/test_trace.py", "tests/test_viz.py",
               "tests/test_examples.py",
               "tests/kernels_cuda/", "tests/gpu/", "tests/test_cuda.py")


def pytest_generate_tests(metafunc):
    if "kernel_set" in metafunc.fixturenames:
        sets = metafunc.config.getoption("--kernels").split(",")
        path = metafunc.definition.nodeid
        if any(path.startswith(prefix) for prefix in KERNEL_FREE):
            sets = sets[:1]
        metafunc.parametrize("kernel_set", sets, indirect=True)


@pytest.fixture(autouse=True)
def kernel_set(request):
    """Every test runs once per kernel set (NumPy reference, Numba), so the whole
    gradcheck suite checks both."""
    previous = kernels.set_kernels(request.param)
    yield request.param
    kernels.set_kernels(previous)


@pytest.fixture(params=DEVICES)
def device(request):
    """Run a test once per available device ('cpu', and 'cuda' when CuPy sees a GPU)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    tc.manual_seed(0)
    yield
