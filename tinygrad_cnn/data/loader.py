"""Datasets and the DataLoader that batches them.

A dataset here is anything with ``len(ds)`` and ``ds[i] -> (image, label)``.
The data sets of this package also have ``get_batch(indices) -> (images,
labels)``, which loads and transforms a whole batch at once (see
``ImageDataset``); the DataLoader uses it when it is there.

The DataLoader prepares batches in a background thread while the model trains
on the current one (NumPy releases the GIL in its heavy loops, so the two
really overlap), holding at most ``prefetch`` batches ready.
"""
import math
import numbers
import queue
import threading

import numpy as np

from .. import backend
from ..tensor import Tensor
from .transforms import apply_batch, use_generator


class ImageDataset:
    """Base of the image data sets: indexing and the batch path.

    Subclasses set ``self.targets`` (N,) int64 and ``self.transform``, and
    implement ``load_images(indices) -> uint8 (n, H, W) or (n, H, W, C)``.
    """

    transform = None

    def load_images(self, indices):
        raise NotImplementedError

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        """``(image, label)``: the transformed image and the label as an int."""
        index = self._check_index(index)
        image = self.load_images([index])[0]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def get_batch(self, indices):
        """``(images, labels)`` for ``indices``: the transform applied to the
        whole batch at once (see ``transforms.apply_batch``), labels int64."""
        indices = np.asarray(indices, dtype=np.int64)
        return apply_batch(self.transform, self.load_images(indices)), self.targets[indices]

    def _check_index(self, index):
        if not isinstance(index, numbers.Integral):
            raise TypeError(f"{type(self).__name__} indices must be integers, got "
                            f"{type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__} index {index} is out of range for "
                             f"{len(self)} examples")
        return int(index) % len(self)


class Subset:
    """The examples ``indices`` of ``dataset``, in that order (e.g. the first N
    for a quick look: ``Subset(ds, range(N))``)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(self.indices) and not (0 <= self.indices.min() and
                                      self.indices.max() < len(dataset)):
            raise IndexError(f"Subset: indices must lie in [0, {len(dataset)}), got "
                             f"[{self.indices.min()}, {self.indices.max()}]")

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def get_batch(self, indices):
        return _load_batch(self.dataset, self.indices[np.asarray(indices, dtype=np.int64)])


def _load_batch(dataset, indices):
    """``(images, labels)`` arrays for ``indices`` of any dataset."""
    if hasattr(dataset, "get_batch"):
        images, labels = dataset.get_batch(indices)
    else:
        pairs = [dataset[int(i)] for i in indices]
        images = np.stack([np.asarray(image) for image, _ in pairs])
        labels = [label for _, label in pairs]
    return images, np.asarray(labels, dtype=np.int64)


class DataLoader:
    """Mini-batches ``(X, y)`` of ``dataset``: X the stacked images (float32
    (N, C, H, W) after ToTensor), y int64 (N,) labels, both Tensors.

    shuffle:   a new order each epoch (each ``iter``); ``seed`` makes the
               sequence of orders, and of random transforms, reproducible. With
               seed=None each ``iter`` draws a seed from the engine's generator
               (as PyTorch's DataLoader does), so ``tinygrad_cnn.manual_seed``
               governs it.
    drop_last: drop the last batch when it is smaller than ``batch_size``.
    prefetch:  batches prepared ahead in a background thread (0: none, the
               batches are made on demand in the caller's thread).
    device:    where the batches are put ('cpu', 'cuda'); ``.to(device)`` too.
    sampler:   the indices to take, in order, instead of all of them (e.g. a
               ``DistributedSampler``: this rank's shard); excludes ``shuffle``.
               A sampler with ``set_epoch`` is told each epoch's number.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 prefetch=2, device=None, sampler=None):
        if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(prefetch, numbers.Integral) or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.prefetch = int(prefetch)
        # checked now: a missing GPU is reported before the first batch is made
        self.device = None if device is None else backend.require_device(device)
        self.epoch = 0

    def to(self, device):
        """Put the batches on ``device`` from now on (returns self, as Module.to)."""
        self.device = backend.require_device(device)
        return self

    def set_epoch(self, epoch):
        """Make the next ``iter`` give epoch ``epoch``'s order (for resuming a run)."""
        self.epoch = int(epoch)

    def state_dict(self):
        """What decides the next epoch's order and random transforms (with the
        engine's generator, when ``seed`` is None): for checkpoints."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state):
        self.seed = state["seed"]
        self.set_epoch(state["epoch"])

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order_rng, transform_rng = self._epoch_generators()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        n = len(self.dataset)
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
        else:
            order = order_rng.permutation(n) if self.shuffle else np.arange(n)
        batches = [order[i:i + self.batch_size] for i in range(0, len(self) * self.batch_size,
                                                                 self.batch_size)]

        def make_batch(indices):
            with use_generator(transform_rng):
                images, labels = _load_batch(self.dataset, indices)
            if self.device is not None:
                images = backend.to_device(images, self.device)
                labels = backend.to_device(labels, self.device)
            return images, labels

        arrays = (_Prefetcher(make_batch, batches, self.prefetch) if self.prefetch
                  else map(make_batch, batches))
        return _as_tensors(arrays)

    def _epoch_generators(self):
        """Two independent generators for this epoch: the order, and the random
        transforms (so adding a transform does not change the order)."""
        seed = self.seed
        if seed is None:
            seed = int(backend.rng().integers(2 ** 63))
        sequence = np.random.SeedSequence(seed, spawn_key=(self.epoch,))
        return [np.random.default_rng(child) for child in sequence.spawn(2)]

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, {len(self)} batches)")


def _as_tensors(arrays):
    """Wrap each (images, labels) pair as Tensors; closing this generator closes
    ``arrays`` (stopping the prefetch thread) when the loop is abandoned."""
    try:
        for images, labels in arrays:
            yield Tensor(images), Tensor(labels)
    finally:
        if isinstance(arrays, _Prefetcher):
            arrays.close()


_END = object()


class _WorkerError:
    def __init__(self, exception):
        self.exception = exception


class _Prefetcher:
    """Iterates ``make_batch(b) for b in batches``, computed ahead in a thread.

    The queue is bounded (``depth``), so the thread never runs more than
    ``depth`` batches ahead; an exception in the thread is raised here, in the
    consumer; ``close()`` stops the thread when the consumer gives up early.
    """

    def __init__(self, make_batch, batches, depth):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        # The thread gets only what it needs, never self: an abandoned
        # _Prefetcher can then be garbage-collected, and __del__ stops the thread.
        self._thread = threading.Thread(target=_produce, daemon=True, name="DataLoader",
                                        args=(make_batch, batches, self._queue, self._stop))
        self._thread.start()
        self._finished = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END or isinstance(item, _WorkerError):
            self._finished = True
            self._thread.join()
            if item is _END:
                raise StopIteration
            raise item.exception
        return item

    def close(self):
        """Stop the thread: tell it to stop, and empty the queue so that a
        ``put`` it is blocked in returns and it can see the signal."""
        self._finished = True
        self._stop.set()
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.01)

    def __del__(self):
        self.close()


def _produce(make_batch, batches, out, stop):
    try:
        for indices in batches:
            if stop.is_set():
                return
            out.put(make_batch(indices))
        out.put(_END)
    except BaseException as exc:      # handed to the consumer, which raises it
        out.put(_WorkerError(exc))
