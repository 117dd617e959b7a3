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
"""
import copy
import math
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
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad.data, group, self.state.setdefault(p, {}))
        return loss

    def _update(self, p, grad, group, state):
        raise NotImplementedError

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
                 nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

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
                 amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad))

    def _validate(self, group):
        super()._validate(group)
        if group["eps"] < 0:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        for i, beta in enumerate(group["betas"]):
            if not 0 <= beta < 1:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta} "
                                 "(must be in [0, 1))")

    def _update(self, p, grad, group, state):
        xp = get_array_module(p.data)
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(p.data),
                         exp_avg_sq=xp.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        if wd != 0:
            if self.decoupled_weight_decay:
                p.data *= 1 - lr * wd
            else:
                grad = grad + wd * p.data
        # The moments are updated in place (they are ours); each line makes at
        # most one temporary, and Python-float factors keep float32 float32.
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg *= beta1
        exp_avg += (1 - beta1) * grad
        exp_avg_sq *= beta2
        square = grad * grad
        square *= 1 - beta2
        exp_avg_sq += square
        del square           # before the next temporary: one alive at a time
        second = exp_avg_sq
        if group["amsgrad"]:
            xp.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        # One new array (out=: an array even for a 0-d parameter) becomes the step.
        denom = xp.sqrt(second, out=xp.empty_like(second))
        denom /= math.sqrt(1 - beta2 ** t)
        denom += group["eps"]
        step = xp.divide(exp_avg, denom, out=denom)
        step *= lr / (1 - beta1 ** t)
        p.data -= step


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    p = p·(1 - lr·weight_decay) before the Adam step, instead of adding
    weight_decay·p to the gradient (which Adam's scaling would then distort)."""
    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
