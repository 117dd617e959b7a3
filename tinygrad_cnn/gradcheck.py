"""Check hand-written backward passes against central finite differences.

    L(x) = Σₖ <fn(x)ₖ, gₖ>          (gₖ: a fixed random upstream gradient)
    numeric  ∂L/∂xᵢ ≈ (L(x + ε eᵢ) - L(x - ε eᵢ)) / 2ε
    analytic ∂L/∂x  = what backward() puts in x.grad after y.backward(g)

A random upstream gradient (not all ones) catches backward passes that
are wrong only in how they combine the output gradient.  For big tensors,
``directions=k`` compares k random directional derivatives
<∂L/∂x, d> ≈ (L(x + ε d) - L(x - ε d)) / 2ε instead of every element.
Work in float64: in float32 the differences drown in rounding error.
"""
import numpy as np

from .autograd import no_grad
from .backend import get_array_module, to_device
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised by a failing gradcheck; ``.report`` holds the details."""

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


class InputReport:
    """The comparison for one input: both gradients and where they differ most."""

    def __init__(self, name, analytic, numeric, atol, rtol, directional):
        self.name, self.analytic, self.numeric = name, analytic, numeric
        self.directional = directional
        self.abs_err = np.abs(analytic - numeric)
        self.bound = atol + rtol * np.abs(numeric)
        # "not <=" rather than ">": a NaN gradient must count as a mismatch.
        self.n_bad = int((~(self.abs_err <= self.bound)).sum())
        self.ok = self.n_bad == 0
        excess = self.abs_err - self.bound
        self.worst = np.unravel_index(int(np.argmax(excess)), excess.shape) \
            if excess.size else ()

    @property
    def max_abs_err(self):
        return float(self.abs_err.max()) if self.abs_err.size else 0.0

    def __str__(self):
        kind = "directional derivatives" if self.directional else "elements"
        head = (f"{self.name}: {'ok' if self.ok else 'MISMATCH'} — "
                f"{self.n_bad} of {self.abs_err.size} {kind} outside tolerance, "
                f"max abs err {self.max_abs_err:.3g}")
        if self.ok or not self.abs_err.size:
            return head
        i = self.worst
        a, n = float(self.analytic[i]), float(self.numeric[i])
        lines = [head,
                 f"  worst at {list(map(int, i))}: analytic {a:.8g}, numeric {n:.8g}, "
                 f"abs err {abs(a - n):.3g}, rel err {abs(a - n) / max(abs(n), 1e-300):.3g}"]
        if self.analytic.size <= 64:
            with np.printoptions(precision=6, suppress=True, linewidth=100):
                lines += ["  analytic:", _indent(self.analytic), "  numeric:",
                          _indent(self.numeric)]
        return "\n".join(lines)


class GradcheckReport:
    def __init__(self, inputs, eps, atol, rtol):
        self.inputs, self.eps, self.atol, self.rtol = inputs, eps, atol, rtol
        self.ok = all(r.ok for r in inputs)

    def __bool__(self):
        return self.ok

    def __str__(self):
        head = (f"gradcheck {'passed' if self.ok else 'FAILED'} "
                f"(eps={self.eps:g}, atol={self.atol:g}, rtol={self.rtol:g}: "
                f"|analytic - numeric| <= atol + rtol·|numeric|)")
        return "\n".join([head] + [str(r) for r in self.inputs])

    __repr__ = __str__


def _indent(array):
    return "\n".join("    " + line for line in str(array).splitlines())


def _as_tuple(outputs):
    return outputs if isinstance(outputs, (tuple, list)) else (outputs,)


def _check(leaves, names, compute, eps, atol, rtol, directions, seed, raise_exception):
    for name, leaf in zip(names, leaves):
        if leaf.dtype != np.float64:
            raise TypeError(f"gradcheck: {name} has dtype {leaf.dtype}; finite differences "
                            "need float64 (call .double() on the inputs/module)")
    results = _as_tuple(compute())
    # Positions, not a filter: under no_grad no output requires grad, so loss()
    # must pick the differentiable outputs (e.g. max's values, not its indices)
    # by where they were in the first call.
    picked = [i for i, y in enumerate(results) if isinstance(y, Tensor) and y.requires_grad]
    if not picked:
        raise ValueError("gradcheck: the function returned no tensor that requires grad")
    outputs = [results[i] for i in picked]
    rng = np.random.default_rng(seed)
    upstream = [get_array_module(y.data).asarray(rng.standard_normal(y.shape)) for y in outputs]

    def loss():
        with no_grad():
            ys = _as_tuple(compute())
            return sum(float((ys[i].data * g).sum()) for i, g in zip(picked, upstream))

    saved_grads = [leaf.grad for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    for i, (y, g) in enumerate(zip(outputs, upstream)):
        y.backward(g.astype(y.dtype), retain_graph=i < len(outputs) - 1)
    analytic = [to_device(leaf.grad.data, "cpu") if leaf.grad is not None
                else np.zeros(leaf.shape) for leaf in leaves]
    for leaf, grad in zip(leaves, saved_grads):
        leaf.grad = grad

    reports = []
    for name, leaf, grad in zip(names, leaves, analytic):
        if directions is None:
            numeric = _numeric_elementwise(leaf, loss, eps)
            reports.append(InputReport(name, grad, numeric, atol, rtol, False))
        else:
            dirs = rng.standard_normal((directions,) + leaf.shape)
            numeric = np.array([_numeric_directional(leaf, loss, eps, d) for d in dirs])
            projected = (dirs * grad).reshape(directions, -1).sum(axis=1)
            reports.append(InputReport(name, projected, numeric, atol, rtol, True))
    report = GradcheckReport(reports, eps, atol, rtol)
    if raise_exception and not report.ok:
        raise GradcheckError(report)
    return report


def _numeric_elementwise(leaf, loss, eps):
    data = leaf.data                 # perturbed in place: fn reads it through the leaf
    numeric = np.zeros(leaf.shape)
    # Multi-indices, not a flat view: reshape(-1) of a non-contiguous array
    # (a transposed leaf) is a copy, and writing it would perturb nothing.
    for i in np.ndindex(*leaf.shape):
        old = data[i].item()
        data[i] = old + eps
        up = loss()
        data[i] = old - eps
        down = loss()
        data[i] = old
        numeric[i] = (up - down) / (2 * eps)
    return numeric


def _numeric_directional(leaf, loss, eps, direction):
    original = leaf.data.copy()
    step = get_array_module(original).asarray(direction) * eps
    leaf.data[...] = original + step
    up = loss()
    leaf.data[...] = original - step
    down = loss()
    leaf.data[...] = original
    return (up - down) / (2 * eps)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, *, directions=None, seed=0,
              raise_exception=True):
    """Check ``fn``'s gradients for every input that requires grad.

    ``fn(*inputs)`` returns a tensor or a tuple of tensors.  Returns a
    ``GradcheckReport`` (truthy when it passed); on failure raises
    ``GradcheckError`` whose message names the input, the worst element, the
    analytic and numeric values and both errors — or, with
    ``raise_exception=False``, returns the failing report.
    """
    inputs = _as_tuple(inputs)
    leaves, names = [], []
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad:
            if not x.is_leaf:
                raise ValueError(f"gradcheck: input {i} is not a leaf; pass leaf tensors "
                                 "(use .detach().requires_grad_())")
            leaves.append(x)
            names.append(f"input {i} {x.shape}")
    if not leaves:
        raise ValueError("gradcheck: no input requires grad; create the inputs with "
                         "requires_grad=True")
    return _check(leaves, names, lambda: fn(*inputs), eps, atol, rtol, directions, seed,
                  raise_exception)


def gradcheck_module(module, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, *, directions=None,
                     seed=0, raise_exception=True):
    """Check a Module's parameter gradients (and those of inputs that require grad).

    The module must be in float64 (``module.double()``).  Running
    statistics of BatchNorm layers are restored afterwards, so checking a
    module in training mode leaves it as it was.
    """
    inputs = _as_tuple(inputs)
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    leaves = [p for _, p in params]
    names = [f"parameter '{n}' {p.shape}" for n, p in params]
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad:
            leaves.append(x)
            names.append(f"input {i} {x.shape}")
    buffers = [(b, b.data.copy()) for _, b in module.named_buffers()]
    try:
        return _check(leaves, names, lambda: module(*inputs), eps, atol, rtol, directions,
                      seed, raise_exception)
    finally:
        for b, data in buffers:
            b.data[...] = data
