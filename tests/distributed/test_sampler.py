"""DistributedSampler: shards disjoint and covering, padding and dropping as PyTorch's,
and a resume at another world size that continues the epoch where it stopped."""
import numpy as np
import pytest

from tinygrad_cnn.distributed import DistributedSampler

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def shards(n, replicas, **kwargs):
    return [list(DistributedSampler(range(n), replicas, r, **kwargs)) for r in range(replicas)]


@pytest.mark.parametrize("n, replicas", [(12, 3), (10, 4), (7, 2), (5, 1)])
def test_shards_are_disjoint_and_cover_the_data_set(n, replicas):
    parts = shards(n, replicas, drop_last=True)
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat))                  # disjoint
    assert len(flat) == n - n % replicas               # every index but the dropped tail
    parts = shards(n, replicas)                         # padded: every index, equal lengths
    assert set(i for part in parts for i in part) == set(range(n))
    assert {len(p) for p in parts} == {-(-n // replicas)}


def test_padding_repeats_the_start_of_the_order_as_pytorch():
    # 10 indices over 4 ranks: 12 slots, the last 2 repeat the first 2 of the order
    parts = shards(10, 4, shuffle=False)
    assert parts == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert shards(10, 4, shuffle=False, drop_last=True) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_torch_gives_the_same_unshuffled_shards():
    torch = pytest.importorskip("torch.utils.data")
    for drop_last in (False, True):
        theirs = [list(torch.DistributedSampler(range(10), 4, r, shuffle=False,
                                                drop_last=drop_last)) for r in range(4)]
        assert shards(10, 4, shuffle=False, drop_last=drop_last) == theirs


def test_set_epoch_reshuffles_and_the_seed_repeats():
    ranks = [DistributedSampler(range(50), 2, r, seed=3) for r in range(2)]
    first = list(ranks[0])
    assert list(DistributedSampler(range(50), 2, 0, seed=3)) == first
    assert list(DistributedSampler(range(50), 2, 0, seed=4)) != first
    for s in ranks:
        s.set_epoch(1)
    assert list(ranks[0]) != first
    assert sorted(list(ranks[0]) + list(ranks[1])) == list(range(50))   # still a partition


def test_resume_with_another_world_size_continues_the_epoch():
    n, batch = 23, 2
    # 2 ranks take 3 batches of 2 each, then the run is saved ...
    before = [DistributedSampler(range(n), 2, r, seed=7) for r in range(2)]
    for s in before:
        s.set_epoch(4)
    consumed = [list(s)[:3 * batch] for s in before]
    state = before[0].state_dict(consumed=3 * batch)
    assert state == before[1].state_dict(consumed=3 * batch)   # the same on every rank
    # ... and resumed on 3 ranks: they share out exactly the rest of epoch 4's order
    after = [DistributedSampler(range(n), 3, r, seed=0) for r in range(3)]
    for s in after:
        s.load_state_dict(state)
    rest = [i for s in after for i in s]
    done = [i for part in consumed for i in part]
    assert not set(done) & set(rest)
    assert set(done) | set(rest) == set(range(n))
    order = np.random.default_rng([7, 4]).permutation(n)
    assert sorted(done) == sorted(order[:12].tolist())     # a prefix of the epoch's order
    # a new epoch starts from its beginning again
    after[0].set_epoch(5)
    assert len(after[0]) == -(-n // 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="invalid rank 2"):
        DistributedSampler(range(4), 2, 2)
    with pytest.raises(ValueError, match="num_replicas"):
        DistributedSampler(range(4), 0, 0)


class Numbers:
    """A data set whose example i is the image [[i]] with label i."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return np.array([[float(i)]], dtype=np.float32), i


def test_dataloader_takes_its_shard_from_the_sampler_and_tells_it_the_epoch():
    from tinygrad_cnn.data import DataLoader
    loaders = [DataLoader(Numbers(), 2, sampler=DistributedSampler(Numbers(), 2, r, seed=1))
               for r in range(2)]
    assert [len(loader) for loader in loaders] == [3, 3]
    epochs = []
    for _ in range(2):
        labels = [[int(v) for _, y in loader for v in y.numpy()] for loader in loaders]
        assert sorted(labels[0] + labels[1]) == list(range(10))
        epochs.append(labels)
    assert epochs[0] != epochs[1]                     # set_epoch reshuffled
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(Numbers(), 2, shuffle=True, sampler=DistributedSampler(Numbers(), 2, 0))
