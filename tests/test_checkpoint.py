"""Checkpoint files: round trips of weights and optimizer state, atomic writes,
and a clear ValueError naming the file and the key for every broken or
mismatched checkpoint."""
import zipfile

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn, optim
from tinygrad_cnn.checkpoint import load_checkpoint, save_checkpoint

from tests.tiny_training import TinyImages, tiny_net, weights

# the loop's logic is the same under every kernel set: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def trained(make_optimizer, steps=3):
    """A tiny network and its optimizer after a few steps (so there is state)."""
    net = tiny_net()
    optimizer = make_optimizer(net.parameters())
    data = TinyImages(8)
    for _ in range(steps):
        loss = F.cross_entropy(net(tc.Tensor(data.images)), tc.Tensor(data.targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net, optimizer


def sgd(params):
    return optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def adam(params):
    return optim.Adam(params, lr=0.01, betas=(0.8, 0.99))


@pytest.mark.parametrize("make_optimizer", [sgd, adam])
def test_round_trip(tmp_path, make_optimizer):
    net, optimizer = trained(make_optimizer)
    path = save_checkpoint(tmp_path / "c.npz", net, optimizer, epoch=4, note="hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]     # no temp file left

    tc.manual_seed(1)
    fresh_net = tiny_net()
    fresh_optimizer = make_optimizer(fresh_net.parameters())
    checkpoint = load_checkpoint(path)
    assert checkpoint.epoch == 4 and checkpoint.meta["note"] == "hello"
    checkpoint.load_into(fresh_net, fresh_optimizer)
    for key, value in weights(net).items():
        np.testing.assert_array_equal(weights(fresh_net)[key], value)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for index, entries in saved["state"].items():
        for name, value in entries.items():
            np.testing.assert_array_equal(loaded["state"][index][name], value)
    # and both go on identically
    for model, opt in ((net, optimizer), (fresh_net, fresh_optimizer)):
        for p in model.parameters():
            p.grad = tc.ones_like(p)
        opt.step()
    for key, value in weights(net).items():
        np.testing.assert_array_equal(weights(fresh_net)[key], value)


def test_loading_is_refused_without_changing_anything(tmp_path):
    net, _ = trained(sgd)
    save_checkpoint(tmp_path / "c.npz", net)
    other = nn.Sequential(*tiny_net(), nn.ReLU(), nn.Linear(3, 2))
    before = weights(other)
    with pytest.raises(ValueError, match=r"c.npz: missing key 'model.6.weight'"):
        load_checkpoint(tmp_path / "c.npz").load_into(other)
    for key, value in before.items():
        np.testing.assert_array_equal(weights(other)[key], value)


def test_wrong_shape_names_file_and_key(tmp_path):
    save_checkpoint(tmp_path / "c.npz", tiny_net(), model_name="tiny")
    wider = nn.Sequential(nn.Conv2d(1, 5, kernel_size=3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(45, 3))
    with pytest.raises(ValueError, match=r"c.npz: key 'model.0.weight' has shape \(4, 1, 3, 3\), "
                                         r"the network's '0.weight' has shape \(5, 1, 3, 3\)"):
        load_checkpoint(tmp_path / "c.npz").load_into(wider)


def test_unexpected_key(tmp_path):
    save_checkpoint(tmp_path / "c.npz", nn.Sequential(*tiny_net(), nn.Linear(3, 3)))
    with pytest.raises(ValueError, match=r"c.npz: unexpected key 'model.5.weight'"):
        load_checkpoint(tmp_path / "c.npz").load_into(tiny_net())


def test_optimizer_mismatch(tmp_path):
    net, optimizer = trained(sgd)
    save_checkpoint(tmp_path / "c.npz", net, optimizer)
    with pytest.raises(ValueError, match=r"c.npz: .*holds a SGD state, the optimizer is a Adam"):
        load_checkpoint(tmp_path / "c.npz").load_into(net, adam(net.parameters()))
    save_checkpoint(tmp_path / "w.npz", net)
    with pytest.raises(ValueError, match=r"w.npz: key '__meta__' has no optimizer state"):
        load_checkpoint(tmp_path / "w.npz").load_into(net, sgd(net.parameters()))


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", *trained(sgd))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"c.npz: not a readable checkpoint, the file is "
                                         r"truncated or corrupt"):
        load_checkpoint(path)


def test_corrupt_array_names_the_key(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", *trained(sgd))
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model.4.weight.npy")
    data = bytearray(path.read_bytes())
    # past the member's local header (30 bytes + name) and the .npy header (128 bytes)
    spot = info.header_offset + 30 + len(info.filename) + 200
    data[spot:spot + 8] = bytes(255 - b for b in data[spot:spot + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"c.npz: key 'model.4.weight' is unreadable"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain.npz: missing key '__meta__'"):
        load_checkpoint(tmp_path / "plain.npz")
    np.savez(tmp_path / "bad.npz", __meta__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(ValueError, match=r"bad.npz: key '__meta__' is not valid JSON"):
        load_checkpoint(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.npz", tiny_net(), epoch=1)
    old_bytes = path.read_bytes()

    def savez_that_dies(file, **arrays):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_dies)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_net(), epoch=2)
    assert path.read_bytes() == old_bytes
    assert load_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
