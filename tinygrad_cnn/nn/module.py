"""``Parameter`` and ``Module``: the bookkeeping every layer shares.

A Module is a tree.  Assigning an attribute files the value by kind, as in
PyTorch::

    self.weight = Parameter(...)      -> self._parameters['weight']
    self.conv1 = Conv2d(...)          -> self._modules['conv1']
    self.register_buffer('running_mean', zeros(C))   -> self._buffers[...]

Everything else (``parameters()``, ``state_dict()``, ``to()``, ``train()``)
is a walk over that tree, and names are the dotted paths through it
("features.3.bias"), so a state dict's keys match PyTorch's for the same
nesting.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from ..backend import as_dtype, device_of, get_array_module, parse_device, to_device
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as learnable: a leaf with requires_grad=True.

    ``Parameter(t)`` shares ``t``'s array (no copy), like PyTorch.
    """
    __slots__ = ()

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.empty(0, dtype=np.float32)
        super().__init__(data.data if isinstance(data, Tensor) else data,
                         requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and network; subclasses write ``forward``."""

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required '
                                  '"forward" function')

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ registration
    def _check_initialised(self, what):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {what} before Module.__init__() call "
                                 f"(call super().__init__() first in {type(self).__name__})")

    def _check_name(self, name, kind):
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
        if "." in name or name == "":
            raise KeyError(f"{kind} name can't contain '.' or be empty, got {name!r}")
        if hasattr(self, name) and name not in getattr(self, "_" + kind + "s", {}):
            raise KeyError(f"attribute '{name}' already exists")

    def register_parameter(self, name, param):
        """Add ``param`` (a Parameter, or None for an absent one like ``bias=False``)."""
        self._check_initialised("parameters")
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (nn.Parameter or None required)")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Add state that is not learned (BN's running mean): saved in the state
        dict (unless ``persistent=False``) and moved by ``to()``, never optimised."""
        self._check_initialised("buffers")
        self._check_name(name, "buffer")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer "
                            f"'{name}' (Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name, module):
        self._check_initialised("child modules")
        self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        modules = self.__dict__.get("_modules")
        buffers = self.__dict__.get("_buffers")
        if isinstance(value, Parameter):
            self._check_initialised("parameters")
            self._forget(name)
            params[name] = value
        elif params is not None and name in params:
            self.register_parameter(name, value)      # None, or a TypeError
        elif isinstance(value, Module):
            self._check_initialised("child modules")
            self._forget(name)
            modules[name] = value
        elif modules is not None and name in modules:
            self.add_module(name, value)
        elif buffers is not None and name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' object to buffer "
                                f"'{name}' (Tensor or None required)")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        """Drop ``name`` from wherever it was filed, before refiling it."""
        self.__dict__.pop(name, None)
        for store in ("_parameters", "_buffers", "_modules"):
            self.__dict__[store].pop(name, None)
        self._non_persistent_buffers.discard(name)

    def __getattr__(self, name):
        # Only called when normal lookup fails, i.e. for registered entries.
        for store in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(store)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for store in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__.get(store, {}):
                del self.__dict__[store][name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    # ------------------------------------------------------------ walking the tree
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """Yield ``(dotted name, module)`` for this module ('' ) and every descendant."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            child_prefix = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, child_prefix, remove_duplicate)

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def named_children(self):
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

    def _named_members(self, store, prefix, recurse, remove_duplicate=True):
        """``(dotted name, tensor)`` for each entry of ``store`` in the tree.

        A tensor shared by two layers (tied weights) is yielded once.
        """
        walk = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        seen = set()
        for module_prefix, module in walk:
            for name, value in getattr(module, store).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    def apply(self, fn):
        """Call ``fn(m)`` on every submodule (children first), then on self."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------ modes
    def train(self, mode=True):
        """Set training mode (BN uses batch statistics, Dropout drops) on the whole tree.

        Independent of grad mode: ``no_grad`` stops graph recording, ``eval()``
        changes what BN and Dropout compute.
        """
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        for param in self.parameters():
            _zero_grad(param, set_to_none)

    # ------------------------------------------------------------ dtype / device
    def to(self, *args, dtype=None, device=None):
        """Move/cast parameters and buffers IN PLACE: ``to('cuda')``, ``to(np.float64)``,
        ``to('cuda', np.float64)``.

        The Parameter objects stay the same (only their ``.data`` and ``.grad``
        change), so an optimizer built before still updates them.  A dtype
        applies to floating-point tensors only; BN's int64 counter stays int64.
        """
        for arg in args:
            if isinstance(arg, str) and (arg == "cpu" or arg.startswith("cuda")):
                device = arg
            else:
                dtype = arg
        device = parse_device(device) if device is not None else None
        dtype = as_dtype(dtype) if dtype is not None else None
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to only accepts floating point dtypes, got {dtype}")
        for tensor in self._all_tensors():
            tensor.data = _convert(tensor.data, dtype, device)
            if tensor.grad is not None:
                tensor.grad = Tensor(_convert(tensor.grad.data, dtype, device))
        return self

    def _all_tensors(self):
        yield from self.parameters()
        yield from self.buffers()

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    def half(self):
        return self.to(np.float16)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device="cuda"):
        return self.to(device)

    # ------------------------------------------------------------ state dict
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """Name -> tensor for every parameter and persistent buffer, PyTorch's key names.

        The values share the module's arrays (detached unless ``keep_vars``).
        """
        if destination is None:
            destination = OrderedDict()
        # Every path to a shared module is listed, as in PyTorch.
        walk = self.named_modules(prefix=prefix.rstrip("."), remove_duplicate=False)
        for module_prefix, module in walk:
            dot = "." if module_prefix else ""
            entries = list(module._parameters.items()) + [
                (name, buf) for name, buf in module._buffers.items()
                if name not in module._non_persistent_buffers]
            for name, value in entries:
                if value is not None:
                    destination[module_prefix + dot + name] = \
                        value if keep_vars else value.detach()
        return destination

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict``'s values (Tensors or NumPy arrays) into this module's
        parameters and buffers, keeping their dtype and device.

        Shape mismatches always raise RuntimeError; missing/unexpected keys raise
        when ``strict``, else are returned as ``(missing_keys, unexpected_keys)``.
        """
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        converted = {}
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = _host_or_device_array(state_dict[key])
            if tuple(value.shape) != target.shape:
                errors.append(f"size mismatch for {key}: copying a param with shape "
                              f"{tuple(value.shape)} from checkpoint, the shape in current "
                              f"model is {target.shape}.")
            converted[key] = value
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in unexpected) + ". ")
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in missing) + ". ")
        if errors:
            # Check everything before copying anything: a failed load changes nothing.
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))
        for key, value in converted.items():
            target = own[key]
            target.data[...] = to_device(value, device_of(target.data))
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ repr
    def extra_repr(self):
        """The layer's own settings for ``repr`` (override in layers)."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _indent(repr(module), 2)
                       for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"


def _indent(text, spaces):
    """Indent every line but the first (the first follows '(name): ')."""
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line for line in rest])


def _zero_grad(param, set_to_none):
    """Drop or zero a gradient without writing into its array, which may be shared."""
    if set_to_none:
        param.grad = None
    elif param.grad is not None:
        param.grad = Tensor(get_array_module(param.grad.data).zeros_like(param.grad.data))


def _convert(array, dtype, device):
    if dtype is not None and array.dtype.kind == "f" and array.dtype != dtype:
        array = array.astype(dtype)
    if device is not None:
        array = to_device(array, device)
    return array


def _host_or_device_array(value):
    """A state-dict value (Tensor, NumPy/CuPy array, number) as an array."""
    if isinstance(value, Tensor):
        return value.data
    if hasattr(value, "__array__") or hasattr(value, "__cuda_array_interface__"):
        xp = get_array_module(value)
        return xp.asarray(value)
    return np.asarray(value)
