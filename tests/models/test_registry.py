"""models.get/names/spec (the registry) and tinygrad_cnn.summary (d2l's shape walk)."""
import importlib
import inspect
import subprocess
import sys

import numpy as np
import pytest

import models
import tinygrad_cnn as tc
from models import alexnet, lenet
from tinygrad_cnn import nn
from tinygrad_cnn.summary import LayerRow, summary

NAMES = ["lenet", "lenet_bn", "lenet_bn_scratch", "alexnet", "alexnet_cifar10", "vgg11",
         "vgg11_small", "nin", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101",
         "resnet152", "densenet"]

# name -> (lr, num_epochs, batch_size, resize) as d2l trains them with train_ch6
# (the Training part of d2l §6.6 and §7.1–7.7, https://d2l.ai/chapter_convolutional-modern/;
# the networks d2l does not train borrow their d2l relative's).
D2L_SETTINGS = {
    "lenet": (0.9, 10, 256, None),
    "lenet_bn": (1.0, 10, 256, None),
    "lenet_bn_scratch": (1.0, 10, 256, None),
    "alexnet": (0.01, 10, 128, 224),
    "alexnet_cifar10": (0.01, 10, 128, None),
    "vgg11": (0.05, 10, 128, 224),
    "vgg11_small": (0.05, 10, 128, 224),
    "nin": (0.1, 10, 128, 224),
    "googlenet": (0.1, 10, 128, 96),
    "resnet18": (0.05, 10, 256, 96),
    "resnet34": (0.05, 10, 256, 96),
    "resnet50": (0.05, 10, 256, 96),
    "resnet101": (0.05, 10, 256, 96),
    "resnet152": (0.05, 10, 256, 96),
    "densenet": (0.1, 10, 256, 96),
}


# ===================================================================== registry
def test_names_in_chapter_order():
    assert models.names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_spec_carries_d2l_training_settings(name):
    s = models.spec(name)
    assert (s.lr, s.num_epochs, s.batch_size, s.resize) == D2L_SETTINGS[name]
    assert s.name == name and s.source


@pytest.mark.parametrize("name, input_shape", [("lenet", (1, 28, 28)),
                                               ("lenet_bn", (1, 28, 28)),
                                               ("alexnet", (1, 224, 224)),
                                               ("alexnet_cifar10", (3, 32, 32)),
                                               ("googlenet", (1, 96, 96))])
def test_spec_input_shape(name, input_shape):
    assert models.spec(name).input_shape == input_shape


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_names_a_builder_taking_in_channels_and_num_classes(name):
    """Checked on the signature: building all fifteen (VGG-11 alone has 128.8M
    parameters) is the per-network tests' job."""
    s = models.spec(name)
    builder = getattr(importlib.import_module(f"models.{s.module}"), s.builder)
    params = inspect.signature(builder).parameters
    assert {"in_channels", "num_classes"} <= set(params)
    assert params["num_classes"].default == 10


@pytest.mark.parametrize("bad", ["LeNet", "resnet", "", None])
def test_unknown_name_lists_the_known_ones(bad):
    with pytest.raises(ValueError, match=rf"models: unknown network {bad!r}; available: "
                                         r"lenet, lenet_bn, .*, densenet$"):
        models.get(bad)


def test_get_builds_and_passes_keyword_arguments():
    net = models.get("lenet", in_channels=3, num_classes=5)
    assert isinstance(net, nn.Sequential)
    assert net(tc.rand(2, 3, 28, 28)).shape == (2, 5)
    assert isinstance(models.get("alexnet_cifar10", num_classes=3), alexnet.AlexNetCIFAR10)


def test_get_rejects_unknown_builder_arguments():
    with pytest.raises(TypeError, match="colour"):
        models.get("lenet", colour="red")


def test_networks_are_imported_only_when_asked_for():
    """``import models`` loads no network module, so one broken module cannot
    break the others (and importing the registry stays cheap)."""
    code = ("import sys, models; "
            "print(sorted(m for m in sys.modules if m.startswith('models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ====================================================================== summary
def manual_walk(net, input_shape):
    """d2l's loop: feed each layer the previous one's output."""
    X = tc.rand(*input_shape)
    rows = []
    with tc.no_grad():
        for name, layer in net.named_children():
            X = layer(X)
            rows.append(LayerRow(name, type(layer).__name__, X.shape,
                                 sum(p.numel() for p in layer.parameters())))
    return rows


@pytest.mark.parametrize("builder", [lenet.lenet, lenet.lenet_bn, lenet.lenet_bn_scratch])
def test_summary_rows_are_d2l_walk(builder):
    net = builder().eval()
    result = summary(net, (2, 1, 28, 28), show=False)
    assert result.rows == manual_walk(net, (2, 1, 28, 28))
    assert result.total_params == result.trainable_params == \
        sum(p.numel() for p in net.parameters())


def test_summary_counts_frozen_parameters_as_untrainable():
    net = lenet.lenet()
    net[0].requires_grad_(False)                      # conv 1: 6·1·5·5 + 6 = 156
    result = summary(net, (1, 1, 28, 28), show=False)
    assert (result.total_params, result.trainable_params) == (61_706, 61_706 - 156)


def test_summary_prints_the_table(capsys):
    summary(lenet.lenet(), (1, 1, 28, 28))
    out = capsys.readouterr().out
    assert "0 (Conv2d)" in out and "(1, 6, 28, 28)" in out and "156" in out
    assert "11 (Linear)" in out and "(1, 10)" in out
    assert "Total params: 61,706" in out and "Trainable params: 61,706" in out
    assert str(summary(lenet.lenet(), (1, 1, 28, 28), show=False)) in out


def test_summary_restores_modes_and_changes_nothing():
    """Eval mode under no_grad: BN statistics untouched, no gradients, no
    random numbers drawn; each module's own mode restored afterwards."""
    net = lenet.lenet_bn()
    net[1].eval()                                     # a mixed-mode network
    modes = [m.training for m in net.modules()]
    state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    tc.manual_seed(3)
    summary(net, (4, 1, 28, 28), show=False)
    drawn_after = tc.rand(3).numpy()
    tc.manual_seed(3)
    assert [m.training for m in net.modules()] == modes
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
    assert all(p.grad is None for p in net.parameters())
    np.testing.assert_array_equal(drawn_after, tc.rand(3).numpy())


def test_summary_follows_a_custom_forward():
    """Children are recorded as forward calls them, not by iterating the net."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(self.body(x)))

    rows = summary(Twice(), (3, 4), show=False).rows
    assert [(r.name, r.layer, r.output_shape, r.num_params) for r in rows] == [
        ("body", "Linear", (3, 4), 20), ("body", "Linear", (3, 4), 20),
        ("head", "Linear", (3, 2), 10)]


def test_summary_of_a_single_layer():
    rows = summary(nn.Conv2d(1, 2, 3), (1, 1, 5, 5), show=False).rows
    assert rows == [LayerRow("Conv2d", "Conv2d", (1, 2, 3, 3), 2 * 9 + 2)]


def test_summary_uses_the_network_dtype():
    net = lenet.lenet().double()
    assert summary(net, (1, 1, 28, 28), show=False).rows[-1].output_shape == (1, 10)


def test_summary_cleans_up_when_forward_fails():
    net = lenet.lenet_bn()
    with pytest.raises(ValueError, match="expected a 4-D input"):
        summary(net, (1, 3, 28, 28), show=False)        # 3 channels, the conv wants 1
    assert all("forward" not in vars(m) for m in net.modules())
    assert all(m.training for m in net.modules())


@pytest.mark.parametrize("bad", [(), (1, 0, 28), (1, 1.5), "1x28"])
def test_summary_rejects_bad_input_shapes(bad):
    with pytest.raises(ValueError, match="summary: input_shape must be positive ints"):
        summary(lenet.lenet(), bad, show=False)
