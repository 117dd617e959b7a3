"""SyncBatchNorm in one process (no process group) is BatchNorm, as in PyTorch, and
convert_sync_batchnorm swaps the layers keeping their parameters and statistics."""
import numpy as np

import tinygrad_cnn as tc
from models.lenet import lenet_bn
from tinygrad_cnn import nn

import pytest

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def test_without_a_process_group_it_is_batchnorm():
    sync, plain = nn.SyncBatchNorm(4).double(), nn.BatchNorm2d(4).double()
    x = tc.randn(5, 4, 3, 3, dtype=tc.float64)
    np.testing.assert_allclose(sync(x).detach().numpy(), plain(x).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(sync.running_var.numpy(), plain.running_var.numpy())


def test_convert_sync_batchnorm_keeps_parameters_buffers_and_keys():
    net = lenet_bn()
    before = net.state_dict()
    bn_weight = net[1].weight
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    kinds = [type(m).__name__ for m in converted.modules()]
    assert "BatchNorm2d" not in kinds and "BatchNorm1d" not in kinds
    assert kinds.count("SyncBatchNorm") == 4
    assert converted[1].weight is bn_weight
    after = converted.state_dict()
    assert list(after) == list(before)
    for key in before:
        np.testing.assert_array_equal(after[key].numpy(), before[key].numpy())
