"""Study pictures: every function writes a real PNG, and the graph's DOT text
names the ops of the forward pass it was drawn from."""
import shutil

import numpy as np
import pytest

import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import Tensor, nn, viz
from tinygrad_cnn.autograd import Function

# a study tool, whose output does not depend on the kernel set: run under the first kernel
# set only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture
def lenet_step():
    """LeNet after one forward and backward on two images: (net, X, logits)."""
    net = models.get("lenet")
    X = tc.rand(2, 1, 28, 28)
    logits = net(X)
    F.cross_entropy(logits, tc.tensor([3, 7])).backward()
    return net, X, logits


def test_draw_graph_of_lenet_names_its_convs_pools_and_parameters(lenet_step):
    net, _, logits = lenet_step
    dot = viz.draw_graph(logits, names=dict(net.named_parameters()))
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert dot.count('label="Conv2d') == 2 and dot.count('label="AvgPool2d') == 2
    assert 'Conv2d[direct]\\n(2, 6, 28, 28)' in dot and 'AvgPool2d\\n(2, 16, 5, 5)' in dot
    assert 'Conv2d[direct]\\n(2, 16, 10, 10)' in dot       # the second conv: thin too
    assert '0.weight\\n(6, 1, 5, 5)' in dot                 # leaves by name and shape
    # 12 recorded ops (flatten is a Reshape) and 10 parameters; each parameter feeds
    # one op, and each op but the last feeds the next
    assert dot.count("shape=box") == 12 and dot.count("shape=ellipse") == 10
    assert dot.count("->") == 10 + 12 - 1


def test_draw_graph_names_each_convs_algorithm():
    x = Tensor(np.random.default_rng(0).standard_normal((1, 16, 6, 6)), requires_grad=True)
    w3 = Tensor(np.ones((16, 16, 3, 3)), requires_grad=True)
    w1 = Tensor(np.ones((8, 16, 1, 1)), requires_grad=True)
    w2 = Tensor(np.ones((16, 16, 2, 2)), requires_grad=True)
    y = F.conv2d(F.conv2d(x, w3, padding=1), w1).sum() + F.conv2d(x, w2, stride=2).sum()
    dot = viz.draw_graph(y)
    for label in ("Conv2d[winograd]\\n(1, 16, 6, 6)", "Conv2d[pointwise]\\n(1, 8, 6, 6)",
                  "Conv2d[im2col]\\n(1, 16, 3, 3)"):
        assert f'label="{label}"' in dot


def test_draw_graph_of_a_leaf_is_one_node():
    x = Tensor(np.ones(3), requires_grad=True)
    dot = viz.draw_graph(x)
    assert dot.count("shape=ellipse") == 1 and "->" not in dot


def test_draw_graph_writes_dot_text_and_renders_only_with_graphviz(tmp_path):
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    y = (x * 2).sum()
    text = viz.draw_graph(y, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == text
    viz.draw_graph(y, tmp_path / "g.png")
    if shutil.which("dot"):
        assert is_png(tmp_path / "g.png")
    else:               # no Graphviz: the text is kept beside, nothing fails
        assert not (tmp_path / "g.png").exists()
        assert (tmp_path / "g.dot").read_text() == text


def test_gradient_flow_feature_maps_and_filters_are_pngs(tmp_path, lenet_step):
    net, X, _ = lenet_step
    assert is_png(viz.plot_gradient_flow(net, tmp_path / "flow.png"))
    assert is_png(viz.plot_feature_maps(net, X, tmp_path / "maps.png"))
    assert is_png(viz.show_filters(net[0], tmp_path / "filters.png"))            # C = 1
    assert is_png(viz.show_filters(net[3].weight, tmp_path / "filters6.png"))    # C = 6
    assert is_png(viz.show_filters(np.ones((4, 3, 3, 3)), tmp_path / "rgb.png"))  # C = 3
    assert all(m.training for m in net.modules())      # plot_feature_maps restored the mode


def test_gradient_flow_needs_a_backward_first(tmp_path):
    with pytest.raises(ValueError, match="backward"):
        viz.plot_gradient_flow(models.get("lenet"), tmp_path / "flow.png")


def test_show_filters_rejects_a_non_conv_weight(tmp_path):
    with pytest.raises(ValueError, match="KH, KW"):
        viz.show_filters(nn.Linear(3, 2), tmp_path / "f.png")


class WrongDouble(Function):
    """y = 2x with a backward off by half: a report with mismatches to draw."""
    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return gy * 3


def test_plot_gradcheck_draws_passing_and_failing_reports(tmp_path):
    x = Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    w = Tensor(np.random.default_rng(1).standard_normal((4, 2)), requires_grad=True)
    passing = tc.gradcheck(lambda x, w: (x @ w).tanh(), (x, w))
    assert is_png(viz.plot_gradcheck(passing, tmp_path / "ok.png"))

    failing = tc.gradcheck(lambda t: WrongDouble()(t), (x,), raise_exception=False)
    assert not failing
    assert is_png(viz.plot_gradcheck(failing, tmp_path / "bad.png"))


def test_plot_history_is_a_png(tmp_path):
    history = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "test_acc": 0.4},
               {"epoch": 2, "train_loss": 1.0, "train_acc": 0.6, "test_acc": None}]
    assert is_png(viz.plot_history(history, tmp_path / "curves.png", num_epochs=3))
