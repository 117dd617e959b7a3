"""Checking the settings ops, layers and transforms take: ints and (H, W) pairs.

One rule everywhere, PyTorch's: a setting of the wrong *type* (``stride=1.5``,
``stride="2"``, ``kernel_size=None``) raises TypeError; one of the right type
but a wrong *value* (``stride=0``, ``padding=-1``, a pair of three) raises
ValueError.  Every message starts with the op's name and shows the value as
it was given: ``max_pool2d: stride must be positive, got 0``.

An int is anything ``operator.index`` accepts (Python and NumPy ints) except
a bool: ``stride=True`` is a mistake, not a 1.
"""
import operator


def _index(value):
    """``value`` as a Python int; TypeError for a bool or a non-integer."""
    if isinstance(value, bool):
        raise TypeError
    return operator.index(value)


def _check_minimum(op, name, value, numbers, minimum):
    if minimum is not None and min(numbers) < minimum:
        bound = {0: "non-negative", 1: "positive"}.get(minimum, f">= {minimum}")
        raise ValueError(f"{op}: {name} must be {bound}, got {value!r}")


def as_int(value, name, op, minimum=None):
    """Check an int setting (e.g. ``groups``) and return it as an int.

    TypeError unless ``value`` is an int; ValueError if it is below ``minimum``.
    """
    try:
        number = _index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {value!r}") from None
    _check_minimum(op, name, value, (number,), minimum)
    return number


def as_pair(value, name, op, minimum=None):
    """Check an int-or-(H, W)-pair setting and return it as a pair of ints.

    An int stands for both axes.  TypeError for anything but an int or a
    tuple/list of ints; ValueError for a tuple/list whose length is not 2, or
    a number below ``minimum`` (0: "non-negative", 1: "positive").
    """
    if type(value) is int:          # the common case, without the general path's cost
        numbers = (value, value)
    else:
        items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
        try:
            numbers = tuple([_index(v) for v in items])
        except TypeError:
            raise TypeError(f"{op}: {name} must be an int or a pair of ints, "
                            f"got {value!r}") from None
        if len(numbers) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(numbers) < minimum:
        _check_minimum(op, name, value, numbers, minimum)
    return numbers
