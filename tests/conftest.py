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


def pytest_generate_tests(metafunc):
    """Every test runs once per kernel set, except those marked ``kernel_free``
    (code that calls no kernel, or whose result cannot depend on the set:
    each such module says why beside its ``pytestmark``), which run under the
    first set only."""
    if "kernel_set" in metafunc.fixturenames:
        sets = metafunc.config.getoption("--kernels").split(",")
        if metafunc.definition.get_closest_marker("kernel_free") is not None:
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
