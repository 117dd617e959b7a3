"""Optimisers with PyTorch's update rules: ``SGD``, ``Adam``, ``AdamW``.

An optimizer holds ``param_groups``: a list of dicts, each with its
``params`` and its own options (``lr``, ``momentum``, ...), so one model can
train its layers at different rates::

    optim.SGD([{"params": net[0].parameters(), "lr": 0.1},
               {"params": net[2].parameters()}], lr=0.01, momentum=0.9)

``step()`` reads each parameter's ``.grad`` and updates ``p.data`` in
place (the Parameter object stays the same; ``p.grad`` is only read, never
written, because a gradient array may be shared).  Per-parameter state
(momentum buffers, Adam's moments) lives in ``self.state[p]`` as raw arrays.

``foreach`` and ``fused`` (PyTorch's names, both None by default): SGD and
Adam update all parameters of a group with one multi-tensor kernel call
(``kernels.sgd_update_multi``, ``kernels.adam_update_multi``): one GPU launch
for all of them (``kernels/fused_cupy.py``), where a loop over the
parameters makes several per parameter.  On the CPU it is that loop, so the
numbers are the same either way.  ``foreach=False`` (or ``fused=False``)
without the other set True asks for the per-parameter loop; both True is an
error, as in PyTorch.
"""
import copy
import numbers

import numpy as np

import kernels

from .autograd import enable_grad
from .backend import device_of, get_array_module, to_device
from .tensor import Tensor


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``state_dict``/``load_state_dict``."""

    def __init__(self, params, defaults):
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable "
                            "of Tensors or dicts, but got a Tensor")
        self.defaults = defaults
        self.state = {}                      # Parameter -> dict of arrays / step count
        self.param_groups = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group: its ``params`` plus options; missing options take the defaults."""
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params "
                                f"is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._validate(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def _validate(self, group):
        """Raise ValueError for a bad option (subclasses check their own)."""
        if group["lr"] < 0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group.get("weight_decay", 0) < 0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")

    def zero_grad(self, set_to_none=True):
        """Drop the gradients (``set_to_none``) or replace them by zeros.

        Never writes into a gradient array: it may be shared with another tensor.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = Tensor(get_array_module(p.grad.data).zeros_like(p.grad.data))

    def step(self, closure=None):
        """One update of every parameter that has a gradient.

        ``closure`` (optional) re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params and _multi_tensor(group) and self._update_all_is_current():
                self._update_all(params, group)
            else:
                for p in params:
                    self._update(p, p.grad.data, group, self.state.setdefault(p, {}))
        return loss

    def _update(self, p, grad, group, state):
        raise NotImplementedError

    @classmethod
    def _update_all_is_current(cls):
        """False for a subclass that overrides ``_update`` alone: its per-parameter
        rule, not the inherited multi-tensor kernel, is what it asked for."""
        def owner(name):
            return next(c for c in cls.__mro__ if name in vars(c))
        return issubclass(owner("_update_all"), owner("_update"))

    def _update_all(self, params, group):
        """Update every parameter of ``params`` (all with a gradient); SGD and Adam
        override this with one multi-tensor kernel call."""
        for p in params:
            self._update(p, p.grad.data, group, self.state.setdefault(p, {}))

    # ------------------------------------------------------------ state dict
    def state_dict(self):
        """``{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}``.

        Parameters are referred to by their position across all groups, as in
        PyTorch, so the dict can be loaded into an optimizer over a fresh model.
        Arrays are copies: later steps do not change a saved state dict.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = [index[id(p)] for p in group["params"]]
            groups.append(saved)
        state = {index[id(p)]: {k: _copy(v) for k, v in s.items()}
                 for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore options and per-parameter state saved by ``state_dict``.

        State arrays are moved to each parameter's device and floating ones
        cast to its dtype, as PyTorch does.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"the optimizer has {len(self.param_groups)}")
        for saved, group in zip(saved_groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group with "
                    f"{len(saved['params'])} parameters, but the optimizer's group has "
                    f"{len(group['params'])}")
        params = {}
        for saved, group in zip(saved_groups, self.param_groups):
            params.update(zip(saved["params"], group["params"]))
            for key, value in saved.items():
                if key != "params":
                    group[key] = copy.deepcopy(value)
        self.state = {}
        for idx, entries in state_dict["state"].items():
            p = params[int(idx)]
            self.state[p] = {k: _like_param(v, p) for k, v in entries.items()}

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines + [")"])


def _multi_tensor(group):
    """Whether a group's step is one multi-tensor kernel call (see the module docstring)."""
    foreach, fused = group.get("foreach"), group.get("fused")
    return bool(foreach or fused or (foreach is None and fused is None))


def _check_foreach_fused(foreach, fused):
    if foreach and fused:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def _copy(value):
    return value.copy() if hasattr(value, "copy") else value


def _like_param(value, p):
    """A saved state entry as an array on ``p``'s device (floats in ``p``'s dtype)."""
    if isinstance(value, numbers.Number):    # the step count
        return value
    if isinstance(value, Tensor):
        value = value.data
    if get_array_module(value) is np:        # also accepts lists and torch CPU tensors
        value = np.array(value)
    value = to_device(value, device_of(p.data))
    if value.dtype.kind == "f":
        value = value.astype(p.dtype)
    return value.copy()


# ---------------------------------------------------------------- SGD
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``::

        d = g + weight_decay·p                         (L2 penalty in the gradient)
        buf = d  (first step),  else  momentum·buf + (1 - dampening)·d
        d = d + momentum·buf  (nesterov)  else  buf     (only when momentum ≠ 0)
        p = p - lr·d
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, foreach=None, fused=None):
        _check_foreach_fused(foreach, fused)
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      foreach=foreach, fused=fused))

    def _validate(self, group):
        super()._validate(group)
        if group["momentum"] < 0:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             f"(got momentum={group['momentum']}, "
                             f"dampening={group['dampening']})")

    def _update(self, p, grad, group, state):
        # One pass over p.data (and the momentum buffer), in place; the kernel
        # makes the buffer on the first step, a copy of d.
        buf = kernels.sgd_update(p.data, grad, state.get("momentum_buffer"), group["lr"],
                                 group["momentum"], group["dampening"],
                                 group["weight_decay"], group["nesterov"])
        if buf is not None:
            state["momentum_buffer"] = buf

    def _update_all(self, params, group):
        states = [self.state.setdefault(p, {}) for p in params]
        buffers = kernels.sgd_update_multi(
            [p.data for p in params], [p.grad.data for p in params],
            [state.get("momentum_buffer") for state in states], group["lr"],
            group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"])
        for state, buf in zip(states, buffers):
            if buf is not None:
                state["momentum_buffer"] = buf


# ---------------------------------------------------------------- Adam / AdamW
class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (t counts this parameter's steps from 1)::

        g = g + weight_decay·p                   (L2 penalty; AdamW decays p instead)
        m = β1·m + (1 - β1)·g                    (first moment)
        v = β2·v + (1 - β2)·g²                   (second moment)
        v̂ = max(v̂, v) if amsgrad else v
        p = p - lr/(1 - β1ᵗ) · m / (sqrt(v̂)/sqrt(1 - β2ᵗ) + eps)

    Dividing by 1 - βᵗ undoes the pull of the zero initial moments towards 0.
    """
    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, fused=None):
        _check_foreach_fused(foreach, fused)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      foreach=foreach, fused=fused))

    def _validate(self, group):
        super()._validate(group)
        if group["eps"] < 0:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        for i, beta in enumerate(group["betas"]):
            if not 0 <= beta < 1:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} "
                                 "(must be in [0, 1))")

    @staticmethod
    def _next_step(p, state, group):
        """``p``'s ``state``, its moments made on its first step, its step count advanced."""
        if not state:
            xp = get_array_module(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data),
                         exp_avg_sq=xp.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        return state

    def _options(self, group):
        beta1, beta2 = group["betas"]
        return (group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                group["amsgrad"], self.decoupled_weight_decay)

    def _update(self, p, grad, group, state):
        self._next_step(p, state, group)
        kernels.adam_update(p.data, grad, state["exp_avg"], state["exp_avg_sq"],
                            state.get("max_exp_avg_sq"), state["step"], *self._options(group))

    def _update_all(self, params, group):
        states = [self._next_step(p, self.state.setdefault(p, {}), group) for p in params]
        kernels.adam_update_multi(
            [p.data for p in params], [p.grad.data for p in params],
            [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s.get("max_exp_avg_sq") for s in states], [s["step"] for s in states],
            *self._options(group))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    p = p·(1 - lr·weight_decay) before the Adam step, instead of adding
    weight_decay·p to the gradient (which Adam's scaling would then distort)."""
    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, foreach=None, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         fused=fused)
