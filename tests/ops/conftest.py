import pytest

from tinygrad_cnn.ops import conv as conv_module


@pytest.fixture
def algorithm():
    """Set conv2d's algorithm inside a test (``conv.set_algorithm``); restored afterwards."""
    previous = conv_module.algorithm
    yield conv_module.set_algorithm
    conv_module.set_algorithm(previous)
