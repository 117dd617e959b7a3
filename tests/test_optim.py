"""Optimisers: several steps against references written element by element from
PyTorch's documented rules, and against torch.optim on the same parameters and
gradients; parameter groups, state dicts, gradients left untouched, bad options."""
import math

import numpy as np
import pytest

import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import nn, optim

SHAPE = (2, 3)
STEPS = 5


def initial_params(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE)


def gradient_sequence(seed=1):
    """A different gradient at every step, so momentum/moments really accumulate."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE) for _ in range(STEPS)]


def run_ours(make_optimizer, p0, grads):
    p = nn.Parameter(p0.copy())
    opt = make_optimizer([p])
    for g in grads:
        p.grad = tc.Tensor(g.copy())
        opt.step()
    return p.detach().numpy()


# ---------------------------------------------------------------- element-wise references
def sgd_reference(p0, grads, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False):
    p = [float(v) for v in p0.ravel()]
    buf = [None] * len(p)
    for g in grads:
        g = g.ravel()
        for i in range(len(p)):
            d = g[i] + weight_decay * p[i]
            if momentum != 0:
                buf[i] = d if buf[i] is None else momentum * buf[i] + (1 - dampening) * d
                d = d + momentum * buf[i] if nesterov else buf[i]
            p[i] -= lr * d
    return np.array(p).reshape(p0.shape)


def adam_reference(p0, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                   amsgrad=False, decoupled=False):
    """Kingma & Ba with bias-corrected moments m̂ = m/(1-β1ᵗ), v̂ = v/(1-β2ᵗ);
    AdamW (decoupled) shrinks p by (1 - lr·wd) instead of adding wd·p to g."""
    b1, b2 = betas
    p = [float(v) for v in p0.ravel()]
    m, v, v_max = [0.0] * len(p), [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        g = g.ravel()
        for i in range(len(p)):
            gi = g[i]
            if decoupled:
                p[i] *= 1 - lr * weight_decay
            else:
                gi += weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            v_max[i] = max(v_max[i], v[i])
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = (v_max[i] if amsgrad else v[i]) / (1 - b2 ** t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(p).reshape(p0.shape)


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=True),
]
ADAM_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.05, amsgrad=True),
    dict(lr=0.05, weight_decay=0.05, amsgrad=True),
]


def config_id(config):
    return ",".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=config_id)
def test_sgd_matches_the_elementwise_rule(config):
    p0, grads = initial_params(), gradient_sequence()
    ours = run_ours(lambda ps: optim.SGD(ps, **config), p0, grads)
    np.testing.assert_allclose(ours, sgd_reference(p0, grads, **config), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=config_id)
def test_adam_and_adamw_match_the_elementwise_rule(name, config):
    p0, grads = initial_params(), gradient_sequence()
    ours = run_ours(lambda ps: getattr(optim, name)(ps, **config), p0, grads)
    if name == "AdamW":
        config = dict(config, weight_decay=config.get("weight_decay", 1e-2))
    expected = adam_reference(p0, grads, decoupled=name == "AdamW", **config)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-14)


def test_adamw_default_weight_decay_is_decoupled():
    p0, grads = initial_params(), gradient_sequence()
    adamw = run_ours(lambda ps: optim.AdamW(ps, lr=0.01), p0, grads)
    adam_l2 = run_ours(lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-2), p0, grads)
    assert not np.allclose(adamw, adam_l2, rtol=1e-9)
    np.testing.assert_allclose(adamw, adam_reference(p0, grads, lr=0.01, weight_decay=1e-2,
                                                     decoupled=True), rtol=1e-12)


# ---------------------------------------------------------------- against torch.optim
@pytest.mark.parametrize("name,config", [("SGD", c) for c in SGD_CONFIGS]
                         + [(n, c) for n in ("Adam", "AdamW") for c in ADAM_CONFIGS],
                         ids=lambda v: v if isinstance(v, str) else config_id(v))
def test_matches_torch_optim(name, config):
    torch = pytest.importorskip("torch")
    p0, grads = initial_params(), gradient_sequence()
    ours = run_ours(lambda ps: getattr(optim, name)(ps, **config), p0, grads)
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = getattr(torch.optim, name)([p], **config)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,config", [("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("Adam", dict(lr=0.01, amsgrad=True))])
def test_state_keys_match_torch(name, config):
    torch = pytest.importorskip("torch")
    p = nn.Parameter(initial_params())
    ours = getattr(optim, name)([p], **config)
    p.grad = tc.Tensor(np.ones(SHAPE))
    ours.step()
    q = torch.nn.Parameter(torch.from_numpy(initial_params()))
    theirs = getattr(torch.optim, name)([q], **config)
    q.grad = torch.ones(SHAPE, dtype=torch.float64)
    theirs.step()
    assert set(ours.state_dict()["state"][0]) == set(theirs.state_dict()["state"][0])


@pytest.mark.parametrize("name,config", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         ("AdamW", dict(lr=0.01))])
def test_training_a_small_net_matches_torch(name, config):
    torch = pytest.importorskip("torch")
    tc.manual_seed(0)
    ours = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 2)).double()
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                            for k, v in ours.state_dict().items()})
    opt_ours = getattr(optim, name)(ours.parameters(), **config)
    opt_theirs = getattr(torch.optim, name)(theirs.parameters(), **config)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
        opt_ours.zero_grad()
        F.mse_loss(ours(tc.tensor(x)), tc.tensor(y)).backward()
        opt_ours.step()
        opt_theirs.zero_grad()
        torch.nn.functional.mse_loss(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt_theirs.step()
    theirs_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value.numpy(), theirs_state[key].numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=key)


# ---------------------------------------------------------------- behaviour
@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.1, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=0.1),
], ids=["sgd-wd", "sgd", "adam", "adamw"])
def test_gradients_are_read_never_written(make):
    shared = np.random.default_rng(2).standard_normal(SHAPE)
    original = shared.copy()
    a, b = nn.Parameter(initial_params(0)), nn.Parameter(initial_params(1))
    opt = make([a, b])
    for _ in range(3):
        a.grad = b.grad = tc.Tensor(shared)        # one array behind both gradients
        opt.step()
    np.testing.assert_array_equal(shared, original)
    assert a.grad.data is shared


def test_parameters_without_gradients_are_skipped():
    p, q = nn.Parameter(initial_params(0)), nn.Parameter(initial_params(1))
    opt = optim.Adam([p, q], lr=0.1)
    p.grad = tc.Tensor(np.ones(SHAPE))
    opt.step()
    np.testing.assert_array_equal(q.detach().numpy(), initial_params(1))
    assert q not in opt.state and p in opt.state
    assert not np.array_equal(p.detach().numpy(), initial_params(0))


def test_updates_are_in_place_and_keep_dtype():
    p = nn.Parameter(np.ones(SHAPE, np.float32))
    data = p.data
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    p.grad = tc.Tensor(np.ones(SHAPE, np.float32))
    opt.step()
    assert p.data is data and p.dtype == np.float32
    np.testing.assert_allclose(data, 0.5)


def test_param_groups_have_their_own_options():
    p0, grads = initial_params(), gradient_sequence()
    a, b = nn.Parameter(p0.copy()), nn.Parameter(p0.copy())
    opt = optim.SGD([{"params": [a], "lr": 0.2}, {"params": b}], lr=0.01, momentum=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.01]
    assert all(g["momentum"] == 0.5 and g["nesterov"] is False for g in opt.param_groups)
    for g in grads:
        a.grad, b.grad = tc.Tensor(g), tc.Tensor(g)
        opt.step()
    np.testing.assert_allclose(a.detach().numpy(), sgd_reference(p0, grads, 0.2, 0.5))
    np.testing.assert_allclose(b.detach().numpy(), sgd_reference(p0, grads, 0.01, 0.5))
    c = nn.Parameter(p0.copy())
    opt.add_param_group({"params": [c], "momentum": 0.0})
    assert opt.param_groups[2]["lr"] == 0.01 and opt.param_groups[2]["momentum"] == 0.0
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_optimizer_takes_a_module_parameter_generator():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = optim.SGD(net.parameters(), lr=0.1)
    assert opt.param_groups[0]["params"] == list(net.parameters())


def test_zero_grad_and_closure():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert loss.item() == 5.0
    np.testing.assert_allclose(p.detach().numpy(), [0.5, -1.0])   # p - 0.25 · 2p
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


# ---------------------------------------------------------------- state dict
@pytest.mark.parametrize("make", [
    lambda ps, lr: optim.SGD(ps, lr=lr, momentum=0.9, nesterov=True),
    lambda ps, lr: optim.Adam(ps, lr=lr, amsgrad=True),
], ids=["sgd", "adam"])
def test_state_dict_round_trip_resumes_exactly(make):
    p0, grads = initial_params(), gradient_sequence()
    p = nn.Parameter(p0.copy())
    opt = make([p], 0.05)
    for g in grads[:3]:
        p.grad = tc.Tensor(g)
        opt.step()
    saved = opt.state_dict()
    snapshot = {k: np.array(v) for k, v in saved["state"][0].items()}

    q = nn.Parameter(p.detach().numpy().copy())
    resumed = make([q], 0.5)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == 0.05          # options restored too
    for g in grads[3:]:
        p.grad, q.grad = tc.Tensor(g), tc.Tensor(g)
        opt.step()
        resumed.step()
    np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-12)
    for key, value in snapshot.items():                    # the saved dict did not move
        np.testing.assert_array_equal(np.array(saved["state"][0][key]), value)


def test_loaded_state_takes_the_parameters_dtype():
    p = nn.Parameter(initial_params())
    opt = optim.Adam([p])
    p.grad = tc.Tensor(np.ones(SHAPE))
    opt.step()
    q = nn.Parameter(initial_params().astype(np.float32))
    resumed = optim.Adam([q])
    resumed.load_state_dict(opt.state_dict())
    assert resumed.state[q]["step"] == 1
    assert resumed.state[q]["exp_avg"].dtype == np.float32
    np.testing.assert_allclose(resumed.state[q]["exp_avg_sq"], opt.state[p]["exp_avg_sq"],
                               rtol=1e-6)


def test_loading_a_state_dict_of_another_shape_fails():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    saved = optim.SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="2 parameters, but the optimizer's group has 1"):
        optim.SGD([a], lr=0.1).load_state_dict(saved)
    with pytest.raises(ValueError, match="1 parameter groups, the optimizer has 2"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(saved)


# ---------------------------------------------------------------- bad options
@pytest.mark.parametrize("make,message", [
    (lambda ps: optim.SGD(ps, lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda ps: optim.Adam(ps, lr=-1), "Invalid learning rate: -1"),
    (lambda ps: optim.AdamW(ps, lr=-1e-3), "Invalid learning rate: -0.001"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), "Invalid weight_decay value: -1"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     "zero dampening"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (lambda ps: optim.Adam(ps, eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (lambda ps: optim.SGD([{"params": ps, "lr": -2}], lr=0.1), "Invalid learning rate: -2"),
    (lambda ps: optim.SGD([], lr=0.1), "empty parameter list"),
])
def test_bad_options_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make([nn.Parameter(np.zeros(2))])


def test_bad_params_raise():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(TypeError, match="iterable of Tensors or dicts, but got a Tensor"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors, but one of the params "
                                        "is ndarray"):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)


# ---------------------------------------------------------------- foreach / fused
def multi_param_run(make_optimizer, dtype, steps=4):
    """Parameters of several shapes and one dtype; one of them has no gradient at the
    second step (it joins the momentum/moments late) -> the final parameters and state."""
    rng = np.random.default_rng(3)
    shapes = [(4, 3, 3, 3), (4,), (), (7, 5), (1,)]
    params = [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = make_optimizer(params)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (step == 1 and i == 1) else \
                tc.Tensor(rng.standard_normal(p.shape).astype(dtype))
        opt.step()
    return [p.detach().numpy() for p in params], opt.state_dict()["state"]


MULTI_CONFIGS = ([("SGD", c) for c in SGD_CONFIGS]
                 + [(n, c) for n in ("Adam", "AdamW") for c in ADAM_CONFIGS])


def assert_identical(got, expected):
    """Same dtype, same shape, same values bit for bit (NaNs in the same places); what
    assert_array_equal(strict=True) checks, which NumPy before 1.24 lacks."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,config", MULTI_CONFIGS,
                         ids=lambda v: v if isinstance(v, str) else config_id(v))
def test_the_multi_tensor_step_is_the_per_parameter_loop_bit_for_bit(kernel_set, name, config,
                                                                       dtype):
    loop = multi_param_run(lambda ps: getattr(optim, name)(ps, foreach=False, **config), dtype)
    for flags in (dict(), dict(foreach=True), dict(fused=True)):
        multi = multi_param_run(lambda ps: getattr(optim, name)(ps, **flags, **config), dtype)
        for ours, theirs in zip(multi[0], loop[0]):
            assert_identical(ours, theirs)
        assert multi[1].keys() == loop[1].keys()
        for index, state in loop[1].items():
            for key, value in state.items():
                assert_identical(multi[1][index][key], value)


@pytest.mark.parametrize("flags,kernel,calls", [
    (dict(), "sgd_update_multi", 2), (dict(foreach=True), "sgd_update_multi", 2),
    (dict(fused=True, foreach=False), "sgd_update_multi", 2),
    (dict(foreach=False), "sgd_update", 5), (dict(fused=False), "sgd_update", 5)])
def test_one_kernel_call_per_group_unless_foreach_or_fused_is_false(flags, kernel, calls):
    import kernels
    params = [nn.Parameter(np.ones(3)) for _ in range(5)]
    opt = optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1,
                    momentum=0.9, **flags)
    for p in params:
        p.grad = tc.Tensor(np.ones(3))
    with kernels.counting() as counted:
        opt.step()
    assert {k: v for k, v in counted.items() if v} == {kernel: calls}


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_foreach_and_fused_together_is_an_error_as_in_torch(name):
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        getattr(optim, name)([nn.Parameter(np.ones(2))], lr=0.1, foreach=True, fused=True)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_foreach_and_fused_are_group_options_with_torchs_defaults(name):
    opt = getattr(optim, name)([nn.Parameter(np.ones(2))], lr=0.1)
    assert (opt.param_groups[0]["foreach"], opt.param_groups[0]["fused"]) == (None, None)
    torch = pytest.importorskip("torch")
    theirs = getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    assert (theirs.param_groups[0]["foreach"], theirs.param_groups[0]["fused"]) == (None, None)


def test_a_state_dict_saved_without_foreach_and_fused_still_loads():
    p = nn.Parameter(np.ones(2))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, foreach=False)
    saved = opt.state_dict()
    for group in saved["param_groups"]:        # as saved before the options existed
        del group["foreach"], group["fused"]
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["foreach"] is False


def test_a_subclass_overriding_update_alone_keeps_its_rule():
    class HalfStep(optim.SGD):
        def _update(self, p, grad, group, state):
            p.data -= 0.5 * group["lr"] * grad
    p = nn.Parameter(np.ones(3))
    p.grad = tc.Tensor(np.ones(3))
    HalfStep([p], lr=1.0).step()
    np.testing.assert_array_equal(p.detach().numpy(), np.full(3, 0.5))
