"""Module bookkeeping: registration, names, state dicts, modes, dtype/device, containers.

Where torch is importable the same network is built with both libraries
(one builder function, given either ``nn`` namespace) and names, shapes,
state-dict keys and repr text must agree exactly.
"""
import copy
import re
from collections import OrderedDict

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import nn, optim
from tinygrad_cnn.nn import Module, Parameter


# ---------------------------------------------------------------- builders for both libraries
def lenet_bn(nn):
    """A LeNet-like Sequential with BatchNorm and Dropout (input 1×28×28)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.BatchNorm1d(120), nn.Tanh(), nn.Dropout(0.3),
        nn.Linear(120, 10))


def nested_net(nn):
    """Custom Module subclass with named Sequentials, a ModuleList and varied layers."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)),
                ("bn", nn.BatchNorm2d(4, momentum=None, affine=False)),
                ("act", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d((2, 2))),
            ]))
            self.heads = nn.ModuleList([nn.Linear(16, 5), nn.Linear(16, 5, bias=False)])
            self.flat = nn.Flatten()
            self.skip = nn.Identity()
            self.norm = nn.LogSoftmax(dim=1)

        def forward(self, x):
            z = self.flat(self.features(x))
            return self.norm(self.heads[0](z) + self.heads[1](self.skip(z)))
    return Net()


def grouped_convs(nn):
    return nn.Sequential(
        nn.Conv2d(4, 8, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
        nn.Conv2d(8, 8, 3, padding="same", bias=False), nn.Softmax(dim=1),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AdaptiveMaxPool2d(1),
        nn.BatchNorm2d(8, eps=1e-3, track_running_stats=False))


BUILDERS = [lenet_bn, nested_net, grouped_convs]
INPUT_SHAPES = {lenet_bn: (4, 1, 28, 28), nested_net: (3, 3, 8, 8), grouped_convs: (2, 4, 9, 9)}


def values(t):
    """A tensor's values as a NumPy array, whether or not it requires grad."""
    return t.detach().numpy()


def torch_or_skip():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------- Parameter
def test_parameter_is_a_leaf_tensor_that_requires_grad_and_shares_data():
    t = tc.zeros(2, 3)
    p = Parameter(t)
    assert isinstance(p, Parameter) and isinstance(p, tc.Tensor)
    assert p.requires_grad and p.is_leaf
    assert p.data is t.data
    assert not isinstance(p.detach(), Parameter)
    assert repr(p).startswith("Parameter containing:\ntensor(")
    assert not Parameter(np.ones(2), requires_grad=False).requires_grad


# ---------------------------------------------------------------- registration
class Custom(Module):
    def __init__(self):
        super().__init__()
        self.w = Parameter(np.ones((2, 2), np.float32))
        self.register_buffer("stat", tc.zeros(2))
        self.register_buffer("scratch", tc.zeros(1), persistent=False)
        self.child = nn.Linear(2, 3)
        self.plain = tc.ones(2)            # a Tensor, not a Parameter: not registered
        self.number = 3

    def forward(self, x):
        return self.child(x @ self.w)


def test_attribute_assignment_files_parameters_buffers_and_modules():
    m = Custom()
    assert [n for n, _ in m.named_parameters()] == ["w", "child.weight", "child.bias"]
    assert [n for n, _ in m.named_buffers()] == ["stat", "scratch"]
    assert [n for n, _ in m.named_children()] == ["child"]
    assert [n for n, _ in m.named_modules()] == ["", "child"]
    assert list(m.state_dict()) == ["w", "stat", "child.weight", "child.bias"]
    assert m.w is m._parameters["w"] and m.child is m._modules["child"]
    assert m.number == 3 and "plain" not in m._parameters
    assert [n for n, _ in m.named_parameters(recurse=False)] == ["w"]
    assert {"w", "stat", "child"} <= set(dir(m))


def test_reassignment_and_deletion_follow_pytorch_rules():
    m = Custom()
    m.w = None                                         # a parameter slot may be emptied
    assert m.w is None and [n for n, _ in m.named_parameters()][0] == "child.weight"
    with pytest.raises(TypeError, match="cannot assign 'Tensor' object to parameter 'w'"):
        m.w = tc.ones(2)
    with pytest.raises(TypeError, match="buffer 'stat'"):
        m.stat = np.zeros(2)
    m.child = nn.ReLU()                                # replacing a child module
    assert isinstance(m.child, nn.ReLU)
    m.child = Parameter(np.zeros(1, np.float32))       # a name moves to its new kind
    assert "child" in m._parameters and "child" not in m._modules
    del m.stat
    assert "stat" not in m._buffers
    with pytest.raises(AttributeError, match="'Custom' object has no attribute 'stat'"):
        m.stat
    with pytest.raises(KeyError, match="can't contain"):
        m.register_buffer("a.b", tc.zeros(1))
    with pytest.raises(KeyError, match="attribute 'number' already exists"):
        m.register_parameter("number", None)


def test_assigning_a_parameter_before_init_says_so():
    class Broken(Module):
        def __init__(self):
            self.w = Parameter(np.ones(1, np.float32))

    with pytest.raises(AttributeError, match=r"before Module.__init__\(\) call.*Broken"):
        Broken()


def test_module_without_forward_and_modulelist_call_raise():
    with pytest.raises(NotImplementedError, match=r"Module \[ModuleList\] is missing"):
        nn.ModuleList([nn.ReLU()])(tc.ones(1))


def test_shared_submodule_is_counted_once():
    shared = nn.Linear(3, 3)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(net.parameters())) == 2
    assert [n for n, _ in net.named_modules()] == ["", "0", "1"]
    # the state dict lists every path, as PyTorch's does
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    net.load_state_dict(net.state_dict())


# ---------------------------------------------------------------- names vs PyTorch
@pytest.mark.parametrize("build", BUILDERS)
def test_names_shapes_and_repr_match_pytorch(build):
    torch = torch_or_skip()
    ours, theirs = build(nn), build(torch.nn)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert [(n, b.shape) for n, b in ours.named_buffers()] == \
        [(n, tuple(b.shape)) for n, b in theirs.named_buffers()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("build", BUILDERS)
def test_state_dicts_load_across_libraries_and_give_the_same_outputs(build):
    torch = torch_or_skip()
    torch.manual_seed(0)
    theirs = build(torch.nn)
    x = tc.randn(*INPUT_SHAPES[build])
    theirs.train()
    theirs(torch.from_numpy(x.numpy()))               # move BN running stats off 0/1
    theirs.eval()
    ours = build(nn).eval()
    ours.load_state_dict(theirs.state_dict())         # torch tensors as values
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x.numpy())).numpy()
    np.testing.assert_allclose(values(ours(x)), expected, rtol=1e-4, atol=1e-5)
    # and back: our keys, shapes and dtypes (int64 counters included) satisfy torch
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.numpy()))
                            for k, v in ours.state_dict().items()})


# ---------------------------------------------------------------- state dict
def test_state_dict_values_are_detached_and_share_memory():
    net = lenet_bn(nn)
    state = net.state_dict()
    assert isinstance(state, OrderedDict)
    assert all(not v.requires_grad for v in state.values())
    assert state["0.weight"].data is net[0].weight.data
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert state["1.num_batches_tracked"].shape == ()
    assert state["1.running_var"].numpy().tolist() == [1.0] * 6
    assert net.state_dict(keep_vars=True)["0.weight"] is net[0].weight
    assert list(net.state_dict(prefix="model."))[0] == "model.0.weight"


@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensors", "numpy"])
def test_state_dict_round_trip_copies_in_place_keeping_dtypes(as_numpy):
    tc.manual_seed(1)
    source = lenet_bn(nn)
    source(tc.randn(4, 1, 28, 28))                    # non-trivial running stats
    tc.manual_seed(2)
    target = lenet_bn(nn)
    params_before = list(target.parameters())
    arrays_before = [p.data for p in params_before]
    state = source.state_dict()
    if as_numpy:                                      # float64 arrays: cast on load
        state = {k: v.numpy().astype(np.float64) if v.dtype.kind == "f" else v.numpy()
                 for k, v in state.items()}
    result = target.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert list(target.parameters()) == params_before  # same objects...
    assert all(p.data is a for p, a in zip(target.parameters(), arrays_before))  # same arrays
    for (name, mine), theirs in zip(target.state_dict().items(), source.state_dict().values()):
        assert mine.dtype == theirs.dtype, name
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=name)
    x = tc.randn(2, 1, 28, 28)
    source.eval(), target.eval()
    np.testing.assert_array_equal(values(source(x)), values(target(x)))


def test_strict_loading_lists_missing_and_unexpected_keys():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    state = net.state_dict()
    del state["0.bias"], state["1.running_mean"]
    state["extra.weight"] = np.zeros(2)
    before = values(net[0].weight).copy()
    state["0.weight"] = np.full((3, 2), 7.0)
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    assert "Error(s) in loading state_dict for Sequential" in message
    assert 'Missing key(s) in state_dict: "0.bias", "1.running_mean".' in message
    assert 'Unexpected key(s) in state_dict: "extra.weight".' in message
    np.testing.assert_array_equal(values(net[0].weight), before)   # nothing was copied

    result = net.load_state_dict(state, strict=False)
    assert result == (["0.bias", "1.running_mean"], ["extra.weight"])
    assert result.missing_keys == ["0.bias", "1.running_mean"]
    assert (values(net[0].weight) == 7).all()


def test_shape_mismatch_names_the_key_and_both_shapes_even_when_not_strict():
    net = nn.Sequential(nn.Conv2d(1, 6, 5))
    state = {"0.weight": np.zeros((6, 1, 3, 3)), "0.bias": np.zeros(6)}
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=re.escape(
                "size mismatch for 0.weight: copying a param with shape (6, 1, 3, 3) from "
                "checkpoint, the shape in current model is (6, 1, 5, 5)")):
            net.load_state_dict(state, strict=strict)


def test_non_persistent_buffers_stay_out_of_the_state_dict():
    m = Custom()
    assert "scratch" not in m.state_dict()
    assert "scratch" in dict(m.named_buffers())
    m.load_state_dict(m.state_dict())


# ---------------------------------------------------------------- train / eval
def test_train_and_eval_set_every_module_and_return_self():
    net = nested_net(nn)
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert net.train() is net and all(m.training for m in net.modules())
    net.features.eval()
    assert net.training and not net.features.bn.training
    with pytest.raises(ValueError, match="boolean"):
        net.train("yes")


def test_training_mode_not_grad_mode_decides_what_bn_and_dropout_do():
    net = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5))
    x = tc.randn(64, 3) * 3 + 5
    with tc.no_grad():                                 # training mode under no_grad
        y = net(x).numpy()
    assert net[0].num_batches_tracked.item() == 1
    assert (y == 0).mean() > 0.3                        # dropout dropped
    kept = y != 0                                       # survivors: batch-normalised, ×2
    normalised = (x.numpy() - x.numpy().mean(0)) / np.sqrt(x.numpy().var(0) + 1e-5)
    np.testing.assert_allclose(y[kept], 2 * normalised[kept], rtol=1e-4, atol=1e-5)

    net.eval()
    w = tc.ones(3, requires_grad=True)
    with tc.enable_grad():                              # eval mode with grad on
        y = net(x * w)
    assert y.requires_grad
    assert net[0].num_batches_tracked.item() == 1       # no update in eval
    rm, rv = net[0].running_mean.numpy(), net[0].running_var.numpy()
    np.testing.assert_allclose(values(y), (x.numpy() - rm) / np.sqrt(rv + 1e-5),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- dtype, device, grads
def test_to_dtype_converts_in_place_and_an_earlier_optimizer_still_works():
    net = lenet_bn(nn)
    params = list(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1)
    net(tc.randn(2, 1, 28, 28)).sum().backward()
    assert net.double() is net
    assert list(net.parameters()) == params
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in params)
    assert net[1].running_mean.dtype == np.float64
    assert net[1].num_batches_tracked.dtype == np.int64     # integers keep their dtype
    before = values(net[0].weight).copy()
    opt.step()
    np.testing.assert_allclose(values(net[0].weight),
                               before - 0.1 * net[0].weight.grad.numpy())
    assert net[0].weight.dtype == np.float64
    net.float()
    assert all(p.dtype == np.float32 for p in params)
    net.to("float64")
    assert net[9].weight.dtype == np.float64
    with pytest.raises(TypeError, match="floating point"):
        net.to(np.int32)


def test_to_device_moves_parameters_and_forward_matches_cpu(device):
    tc.manual_seed(3)
    net = lenet_bn(nn).eval()
    x = tc.randn(2, 1, 28, 28)
    expected = values(net(x))
    params = list(net.parameters())
    net.to(device)
    assert list(net.parameters()) == params
    assert {p.device for p in net.parameters()} | {b.device for b in net.buffers()} == \
        {tc.backend.parse_device(device)}
    out = values(net(x.to(device)).cpu())
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_zero_grad_and_requires_grad_():
    net = nn.Linear(3, 2)
    shared = np.ones((2, 3), np.float32)
    net.weight.grad = tc.Tensor(shared)
    net.zero_grad(set_to_none=False)
    assert (net.weight.grad.numpy() == 0).all() and net.bias.grad is None
    assert (shared == 1).all()                          # a shared array is never written
    net.zero_grad()
    assert net.weight.grad is None
    assert net.requires_grad_(False) is net
    assert not any(p.requires_grad for p in net.parameters())


def test_apply_visits_children_before_parents():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "ReLU", "Linear", "Sequential", "Sequential"]

    def init_linear(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.5)
    net.apply(init_linear)
    assert (values(net[1][1].weight) == 0.5).all()


# ---------------------------------------------------------------- containers
def test_sequential_indexing_slicing_iteration_and_append():
    layers = [nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)]
    net = nn.Sequential(*layers)
    assert len(net) == 3 and list(net) == layers
    assert net[0] is layers[0] and net[-1] is layers[2] and net[-3] is layers[0]
    for bad in (3, -4):
        with pytest.raises(IndexError, match="out of range.*length 3"):
            net[bad]
    tail = net[1:]
    assert isinstance(tail, nn.Sequential) and list(tail) == layers[1:]
    assert list(tail.state_dict()) == ["2.weight", "2.bias"]    # keys kept, as in PyTorch
    x = tc.randn(5, 4)
    np.testing.assert_allclose(values(net(x)), values(layers[2](layers[1](layers[0](x)))))
    np.testing.assert_allclose(values(net(x)), values(tail(net[0](x))))
    net.append(nn.Sigmoid())
    assert len(net) == 4 and isinstance(net[3], nn.Sigmoid)
    net[1] = nn.Tanh()
    assert isinstance(net[1], nn.Tanh) and list(net._modules) == ["0", "1", "2", "3"]


def test_sequential_from_ordered_dict_uses_its_names():
    net = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.ReLU()))
    assert list(net.state_dict()) == ["fc.weight", "fc.bias"]
    assert net.fc is net[0]


def test_modulelist_registers_its_entries():
    blocks = nn.ModuleList([nn.Linear(2, 2)])
    blocks.append(nn.Linear(2, 3)).extend([nn.ReLU(), nn.Linear(3, 1)])
    assert len(blocks) == 4
    assert [n for n, _ in blocks.named_parameters()] == \
        ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert isinstance(blocks[-1], nn.Linear) and blocks[-1].out_features == 1
    assert [type(b).__name__ for b in blocks] == ["Linear", "Linear", "ReLU", "Linear"]
    sub = blocks[1:3]
    assert isinstance(sub, nn.ModuleList) and sub[0] is blocks[1]
    with pytest.raises(IndexError, match="ModuleList of length 4"):
        blocks[4]


def test_deepcopy_gives_an_independent_module():
    net = lenet_bn(nn)
    twin = copy.deepcopy(net)
    assert isinstance(twin[0].weight, Parameter) and twin[0].weight is not net[0].weight
    np.testing.assert_array_equal(values(twin[0].weight), values(net[0].weight))
    twin[0].weight.data[...] = 0
    assert values(net[0].weight).any()
    assert list(twin.state_dict()) == list(net.state_dict())
