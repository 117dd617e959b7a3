"""DataLoader: batching, order and reproducibility, the prefetch thread
(bounded, exceptions, shutdown), devices; ImageDataset and Subset."""
import gc
import threading
import time

import numpy as np
import pytest

import tinygrad_cnn as tc
from tinygrad_cnn import backend
from tinygrad_cnn.data import DataLoader, ImageDataset, Subset
from tinygrad_cnn.data import transforms as T

# data loading and transforms call no kernel: run under the first kernel set only
# (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


class Numbered(ImageDataset):
    """n uint8 (2, 3) images; image i is filled with i (mod 256), its label i % 10,
    so a batch tells which examples it holds.  Counts the batches it loads."""

    def __init__(self, n, transform=T.ToTensor(), fail_at=None):
        self.targets = np.arange(n) % 10
        self.transform = transform
        self.fail_at = fail_at
        self.loads = 0

    def load_images(self, indices):
        self.loads += 1
        if self.fail_at is not None and self.fail_at in indices:
            raise KeyError(f"cannot load example {self.fail_at}")
        return np.broadcast_to(np.asarray(indices, np.uint8)[:, None, None],
                               (len(indices), 2, 3)).copy()


class Plain:
    """A dataset with only __len__ and __getitem__ (no batch path)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full((1, 2, 2), i / 255, np.float32), i % 10


def indices_of(X):
    """The example numbers of a batch of Numbered or Plain images (i / 255)."""
    return np.rint(X.numpy().reshape(len(X), -1)[:, 0] * 255).astype(int)


def epoch(loader):
    return [int(i) for X, _ in loader for i in indices_of(X)]


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("n, batch_size, drop_last", [
    (10, 3, False), (10, 3, True), (9, 3, False), (9, 3, True), (2, 5, False), (2, 5, True)])
def test_batches_in_order(n, batch_size, drop_last, prefetch):
    loader = DataLoader(Numbered(n), batch_size, drop_last=drop_last, prefetch=prefetch)
    batches = list(loader)
    kept = n - n % batch_size if drop_last else n
    assert len(loader) == len(batches) == -(-kept // batch_size)
    assert epoch(loader) == list(range(kept))
    for X, y in batches:
        assert X.dtype == np.float32 and X.shape[1:] == (1, 2, 3)
        assert y.dtype == np.int64 and y.shape == (X.shape[0],)
        assert isinstance(X, tc.Tensor) and not X.requires_grad
        np.testing.assert_array_equal(y.numpy(), indices_of(X) % 10)


def test_datasets_without_a_batch_path_are_stacked():
    loader = DataLoader(Plain(7), batch_size=3, shuffle=True, seed=0)
    X, y = next(iter(loader))
    assert X.shape == (3, 1, 2, 2) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y.numpy(), indices_of(X) % 10)
    assert sorted(epoch(loader)) == list(range(7))


def test_shuffle_is_reproducible_and_new_each_epoch():
    make = lambda seed: DataLoader(Numbered(50), 8, shuffle=True, seed=seed)  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    first, second = epoch(a), epoch(a)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first != second                                  # a new order each epoch
    assert [epoch(b), epoch(b)] == [first, second]          # same seed, same orders
    assert epoch(c) != first


def test_set_epoch_replays_an_epoch():
    loader = DataLoader(Numbered(30), 4, shuffle=True, seed=5)
    orders = [epoch(loader) for _ in range(3)]
    resumed = DataLoader(Numbered(30), 4, shuffle=True, seed=5)
    resumed.set_epoch(2)
    assert epoch(resumed) == orders[2]


def test_without_a_seed_manual_seed_governs_the_order():
    tc.manual_seed(4)
    first = epoch(DataLoader(Numbered(30), 4, shuffle=True))
    tc.manual_seed(4)
    assert epoch(DataLoader(Numbered(30), 4, shuffle=True)) == first
    assert epoch(DataLoader(Numbered(30), 4, shuffle=True)) != first


def test_random_transforms_do_not_depend_on_the_training_threads_draws():
    """The worker draws from the loader's generator, so whatever the training
    loop draws from the engine's generator meanwhile changes nothing."""
    augment = T.Compose([T.ToTensor(), T.RandomCrop(2, padding=1), T.RandomHorizontalFlip()])
    data = Numbered(40, transform=augment)

    def run(draw_in_between, seed=3):
        out = []
        for X, _ in DataLoader(data, 4, shuffle=True, seed=seed):
            if draw_in_between:
                backend.rng().random(100)         # like dropout in the training step
            out.append(X.numpy())
        return np.concatenate(out)

    first = run(False)
    np.testing.assert_array_equal(run(True), first)
    assert not np.array_equal(run(False, seed=4), first)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_error_while_loading_reaches_the_consumer(prefetch):
    loader = DataLoader(Numbered(10, fail_at=7), batch_size=3, prefetch=prefetch)
    seen = []
    with pytest.raises(KeyError, match="cannot load example 7"):
        for X, _ in loader:
            seen += indices_of(X).tolist()
    assert seen == list(range(6))                  # the batches before it came through
    assert not loader_threads()


def loader_threads():
    """The live prefetch threads, after giving finished ones a moment."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        gc.collect()
        alive = [t for t in threading.enumerate() if t.name == "DataLoader"]
        if not alive:
            return []
        time.sleep(0.01)
    return alive


def test_abandoned_iteration_stops_the_thread():
    loader = DataLoader(Numbered(100), batch_size=2, prefetch=2)
    for _ in loader:
        break
    assert not loader_threads()
    iterator = iter(loader)
    next(iterator)
    del iterator
    assert not loader_threads()


def test_the_thread_works_at_most_prefetch_batches_ahead():
    data = Numbered(100)
    iterator = iter(DataLoader(data, batch_size=2, prefetch=2))
    for consumed in (1, 2):
        next(iterator)
        # consumed, 2 queued, and 1 more made and waiting for room in the queue
        expected = consumed + 2 + 1
        deadline = time.monotonic() + 5
        while data.loads < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)                     # time to overshoot, if it would
        assert data.loads == expected
    iterator.close()
    assert not loader_threads()


def test_device_argument_and_to():
    loader = DataLoader(Numbered(4), 2, device="cpu")
    X, y = next(iter(loader))
    assert X.device == y.device == "cpu"
    assert loader.to("cpu") is loader and loader.device == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        DataLoader(Numbered(4), 2, device="tpu")


@pytest.mark.skipif(backend.cupy is None, reason="needs CuPy and a GPU")
def test_batches_move_to_the_gpu():
    X, y = next(iter(DataLoader(Numbered(4), 2).to("cuda")))
    assert X.device == y.device == "cuda:0"


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "DataLoader: batch_size must be a positive int, got 0"),
    ({"batch_size": 2.0}, "DataLoader: batch_size must be a positive int, got 2.0"),
    ({"prefetch": -1}, "DataLoader: prefetch must be an int >= 0, got -1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(Numbered(4), **kwargs)


# ---------------------------------------------------------------- ImageDataset, Subset
def test_image_dataset_indexing():
    data = Numbered(5)
    image, label = data[-1]
    assert image.shape == (1, 2, 3) and label == 4 and isinstance(label, int)
    with pytest.raises(IndexError, match="Numbered index 5 is out of range for 5 examples"):
        data[5]
    with pytest.raises(TypeError, match="Numbered indices must be integers, got str"):
        data["0"]


@pytest.mark.parametrize("base", [Numbered(20), Plain(20)], ids=["batch path", "items"])
def test_subset_keeps_the_chosen_examples(base):
    subset = Subset(base, range(5, 12))
    assert len(subset) == 7
    assert epoch(DataLoader(subset, 3)) == list(range(5, 12))
    assert subset[0][1] == 5


def test_subset_bad_indices():
    with pytest.raises(IndexError, match=r"Subset: indices must lie in \[0, 4\), got \[0, 4\]"):
        Subset(Numbered(4), [0, 4])
