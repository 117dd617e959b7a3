"""Checkpoints: a network's weights, its optimizer's state and where training
stood, in one ``.npz`` file.

Layout of the file (``np.savez``, read back with ``allow_pickle=False`` so a
checkpoint can never run code)::

    model.<state dict key>            the network's parameters and buffers
    optimizer.<index>.<name>          per-parameter optimizer arrays (momentum)
    __meta__                          uint8 bytes of a JSON object: format,
                                      epoch, optimizer options, RNG state, ...

Files are written atomically (``files.atomic_write``): the bytes go to a
temporary file in the same folder, which is renamed over the old checkpoint
only once it is complete.
A run killed mid-write therefore leaves the previous checkpoint intact.

Every problem found when reading (a truncated file, a missing key, a shape
that does not fit the network) is a ValueError naming the file and the key;
a file the user may not read is a PermissionError saying so.  Nothing with a
NaN or infinite weight, buffer or optimizer array is ever written or loaded
(``NonFiniteStateError``): such a state comes from a run that diverged.
"""
import json
import zipfile
from pathlib import Path

import numpy as np

from .backend import to_device
from .files import atomic_write

FORMAT = "tinygrad_cnn.checkpoint"
VERSION = 1
META_KEY = "__meta__"
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."


class NonFiniteStateError(ValueError):
    """A weight, buffer or optimizer array holds NaN or infinite values;
    ``keys`` names them (as in the file: ``model.<key>``, ``optimizer.<...>``)."""

    def __init__(self, message, keys):
        super().__init__(message)
        self.keys = keys


def non_finite_keys(arrays):
    """The keys of ``arrays`` (name -> NumPy array) whose floating-point values
    are not all finite, in order."""
    return [key for key, value in arrays.items()
            if value.dtype.kind in "fc" and not np.isfinite(value).all()]


class Checkpoint:
    """What a checkpoint file holds, validated for structure but not yet
    applied to any network: ``model_state`` (key -> array), ``optimizer_arrays``
    (key -> array), ``meta`` (the JSON object)."""

    def __init__(self, path, model_state, optimizer_arrays, meta):
        self.path = Path(path)
        self.model_state = model_state
        self.optimizer_arrays = optimizer_arrays
        self.meta = meta

    @property
    def epoch(self):
        """Epochs completed when the checkpoint was written."""
        return self.meta.get("epoch", 0)

    def field(self, *names):
        """``meta[names[0]][names[1]]...``; a ValueError naming the file and the
        missing entry (not a KeyError) when the metadata lacks it."""
        value = self.meta
        for depth, name in enumerate(names):
            if not isinstance(value, dict) or name not in value:
                raise ValueError(f"{self.path}: key '{META_KEY}' has no "
                                 f"'{'.'.join(names[:depth + 1])}' (a file written by another "
                                 "program or version, or edited)")
            value = value[name]
        return value

    def __repr__(self):
        return (f"Checkpoint({self.path}, epoch {self.epoch}, {len(self.model_state)} "
                f"model arrays, optimizer {'yes' if self.meta.get('optimizer') else 'no'})")

    # ------------------------------------------------------------ applying
    def load_into(self, net, optimizer=None):
        """Copy the weights into ``net`` (and the state into ``optimizer``).

        Everything is checked first, so a mismatched or non-finite checkpoint
        changes nothing.
        """
        self._check_model(net)
        self._check_finite()
        optimizer_state = self._optimizer_state(optimizer) if optimizer is not None else None
        net.load_state_dict(self.model_state)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)

    def _check_model(self, net):
        own = net.state_dict()
        for key, tensor in own.items():
            if key not in self.model_state:
                raise ValueError(f"{self.path}: missing key '{MODEL_PREFIX}{key}': the network "
                                 f"has '{key}' but the checkpoint does not (a checkpoint of "
                                 f"another network{self._model_hint()}?)")
            shape = tuple(self.model_state[key].shape)
            if shape != tuple(tensor.shape):
                raise ValueError(f"{self.path}: key '{MODEL_PREFIX}{key}' has shape {shape}, "
                                 f"the network's '{key}' has shape {tuple(tensor.shape)} "
                                 f"(a checkpoint of another network{self._model_hint()}?)")
        unexpected = [key for key in self.model_state if key not in own]
        if unexpected:
            raise ValueError(f"{self.path}: unexpected key '{MODEL_PREFIX}{unexpected[0]}' "
                             f"({len(unexpected)} key(s) the network does not have; a "
                             f"checkpoint of another network{self._model_hint()}?)")

    def _check_finite(self):
        bad = non_finite_keys({MODEL_PREFIX + key: value
                               for key, value in self.model_state.items()})
        bad += non_finite_keys(self.optimizer_arrays)
        if bad:
            raise NonFiniteStateError(
                f"{self.path}: key '{bad[0]}' holds NaN or infinite values ({len(bad)} "
                "array(s) do): the run that wrote it diverged; use an earlier checkpoint or "
                "train again with a lower learning rate", bad)

    def _model_hint(self):
        name = self.meta.get("run", {}).get("model")     # set by fit's meta=
        return f", '{name}'" if name else ""

    def _optimizer_state(self, optimizer):
        """The optimizer's ``state_dict`` rebuilt from the file, checked against
        ``optimizer``'s parameters."""
        if self.meta.get("optimizer") is None:
            raise ValueError(f"{self.path}: key '{META_KEY}' has no optimizer state "
                             "(a weights-only file cannot resume training)")
        kind = self.field("optimizer", "type")
        if kind != type(optimizer).__name__:
            raise ValueError(f"{self.path}: key '{META_KEY}' holds a {kind} state, "
                             f"the optimizer is a {type(optimizer).__name__}")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {}
        for index, entries in self.field("optimizer", "state").items():
            index = int(index)
            if index >= len(params):
                raise ValueError(f"{self.path}: key '{META_KEY}' has optimizer state for "
                                 f"parameter {index}, the optimizer has {len(params)}")
            state[index] = {}
            for name, value in entries.items():
                if value == "array":
                    key = f"{OPTIMIZER_PREFIX}{index}.{name}"
                    if key not in self.optimizer_arrays:
                        raise ValueError(f"{self.path}: missing key '{key}'")
                    value = self.optimizer_arrays[key]
                    if tuple(value.shape) != tuple(params[index].shape):
                        raise ValueError(f"{self.path}: key '{key}' has shape "
                                         f"{tuple(value.shape)}, its parameter has shape "
                                         f"{tuple(params[index].shape)}")
                state[index][name] = value
        # JSON turned tuples (Adam's betas) into lists; options are never lists.
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
                   for k, v in group.items()} for group in self.field("optimizer", "param_groups")]
        return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- writing
def save_checkpoint(path, net, optimizer=None, **meta):
    """Write ``net``'s state dict, ``optimizer``'s state (if given) and the
    JSON-serialisable ``meta`` (epoch, model name, RNG state, ...) to ``path``
    atomically.  Returns the path.

    Raises NonFiniteStateError, writing nothing, when an array holds NaN or
    infinite values: an older file at ``path`` stays the last good one.
    """
    arrays = {MODEL_PREFIX + key: _host(tensor.data) for key, tensor in net.state_dict().items()}
    meta = dict(meta, format=FORMAT, version=VERSION)
    if optimizer is not None:
        optimizer_meta, optimizer_arrays = _split_optimizer_state(optimizer)
        meta["optimizer"] = optimizer_meta
        arrays.update(optimizer_arrays)
    bad = non_finite_keys(arrays)
    if bad:
        raise NonFiniteStateError(f"{path}: not written: '{bad[0]}' holds NaN or infinite "
                                  f"values ({len(bad)} array(s) do)", bad)
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return write_npz_atomically(path, arrays)


def _split_optimizer_state(optimizer):
    """An optimizer's ``state_dict`` as (JSON part, arrays): each array entry
    is replaced by the marker "array" and stored as ``optimizer.<index>.<name>``."""
    state_dict = optimizer.state_dict()
    arrays, state = {}, {}
    for index, entries in state_dict["state"].items():
        state[str(index)] = {}
        for name, value in entries.items():
            if hasattr(value, "shape"):
                arrays[f"{OPTIMIZER_PREFIX}{index}.{name}"] = _host(value)
                value = "array"
            state[str(index)][name] = value
    meta = {"type": type(optimizer).__name__, "param_groups": state_dict["param_groups"],
            "state": state}
    return meta, arrays


def _host(array):
    return np.asarray(to_device(array, "cpu"))


def write_npz_atomically(path, arrays):
    """``np.savez(path, **arrays)``, atomically (see ``files.atomic_write``)."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


# ---------------------------------------------------------------- reading
def load_checkpoint(path):
    """Read and check the checkpoint at ``path``; returns a ``Checkpoint``.

    FileNotFoundError when there is no file; ValueError naming the file (and
    the key, where one is at fault) for a truncated, corrupt or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    arrays = _read_arrays(path)
    if META_KEY not in arrays:
        raise ValueError(f"{path}: missing key '{META_KEY}': not a tinygrad_cnn checkpoint")
    meta = _parse_meta(path, arrays.pop(META_KEY))
    model_state = {key[len(MODEL_PREFIX):]: value for key, value in arrays.items()
                   if key.startswith(MODEL_PREFIX)}
    optimizer_arrays = {key: value for key, value in arrays.items()
                        if key.startswith(OPTIMIZER_PREFIX)}
    stray = [key for key in arrays if key not in optimizer_arrays
             and not key.startswith(MODEL_PREFIX)]
    if stray:
        raise ValueError(f"{path}: unexpected key '{stray[0]}' (not model., optimizer. or "
                         f"{META_KEY})")
    return Checkpoint(path, model_state, optimizer_arrays, meta)


def _read_arrays(path):
    """Every array of the npz, read now (a lazily read member could fail later,
    far from the file's name)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except PermissionError as exc:      # unreadable is not corrupt: say what it is
        raise PermissionError(f"{path}: permission denied reading the checkpoint; check the "
                              "file's permissions (ls -l) or read it as its owner") from exc
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint, the file is truncated or "
                         f"corrupt ({exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not a checkpoint (.npz archive)")
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except Exception as exc:     # zipfile's CRC error, a short read, a bad header
                raise ValueError(f"{path}: key '{key}' is unreadable, the file is truncated "
                                 f"or corrupt ({exc})") from exc
    return arrays


def _parse_meta(path, raw):
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: key '{META_KEY}' is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: key '{META_KEY}' does not describe a {FORMAT} file")
    if meta.get("version", 0) > VERSION:
        raise ValueError(f"{path}: key '{META_KEY}' says format version {meta['version']}, "
                         f"this tinygrad_cnn reads up to {VERSION}")
    return meta
