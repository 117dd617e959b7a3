"""models.presets: a quick preset for every registry network, at an input side
its layer stack accepts (and, where the side is above Fashion-MNIST's 28, the
smallest one)."""
import pytest

import models
import models.presets
import tinygrad_cnn as tc
from tinygrad_cnn import no_grad

from tests.models.checks import once_per_run


def test_every_network_has_a_quick_preset():
    for name in models.names():
        preset = models.presets.get(name, "quick")
        settings = preset.settings(name)
        assert settings["lr"] > 0 and settings["num_epochs"] >= 1 and settings["batch_size"] >= 1
        assert preset.dataset == "fashion_mnist" and preset.why
        # an init the train command accepts (tinygrad_cnn/cli.py --init)
        assert preset.init in ("xavier", "kaiming", "default")


def test_settings_fill_in_d2l_values():
    settings = models.presets.get("lenet_bn").settings("lenet_bn")
    spec = models.spec("lenet_bn")
    assert (settings["lr"], settings["batch_size"]) == (spec.lr, spec.batch_size)
    assert settings["num_epochs"] == models.presets.get("lenet_bn").num_epochs


@pytest.mark.parametrize("name, preset, message", [
    ("lenet", "slow", "unknown preset 'slow'"),
    ("nosuchnet", "quick", "unknown network 'nosuchnet'")])
def test_bad_names_fail_clearly(name, preset, message):
    with pytest.raises(ValueError, match=message):
        models.presets.get(name, preset)


def _logits_shape(name, side):
    net = models.get(name, in_channels=1)
    net.eval()
    with no_grad():
        return net(tc.zeros(1, 1, side, side)).shape


@pytest.mark.parametrize("name", models.names())
def test_preset_side_is_valid_and_the_smallest_above_28(request, kernel_set, name):
    once_per_run(request, kernel_set)
    side = models.presets.get(name).resize or 28
    assert _logits_shape(name, side) == (1, 10)
    if side > 28:                   # one pixel less must not fit the layer stack
        with pytest.raises(ValueError):
            _logits_shape(name, side - 1)
