import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import backend

DEVICES = ["cpu"] + (["cuda"] if backend.cupy is not None and
                     backend.cupy.cuda.runtime.getDeviceCount() > 0 else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Run a test once per available device ('cpu', and 'cuda' when CuPy sees a GPU)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    tc.manual_seed(0)
    yield
