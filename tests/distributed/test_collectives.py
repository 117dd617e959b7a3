"""The process group's collectives on 2 ranks (mpiexec -n 2 ... -m mpi)."""
import numpy as np
import pytest

import tinygrad_cnn as tc

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = [pytest.mark.mpi, pytest.mark.kernel_free]


def test_rank_and_world_size(dist):
    ranks = dist.all_gather_object(dist.rank())
    assert ranks == [0, 1] and dist.world_size() == 2
    assert sorted(dist.all_gather_object(dist.local_rank())) == [0, 1]   # one machine
    dist.barrier()


def test_ranks_on_one_machine_share_its_cores(dist, monkeypatch):
    from kernels import threads
    from tinygrad_cnn.distributed import process_group
    assert process_group.ranks_here() == 2
    before = threads.get_num_threads()
    monkeypatch.setattr(threads, "_requested", None)     # no thread count of the user's,
    for variable in threads.THREAD_COUNT_VARIABLES:      # in either form
        monkeypatch.delenv(variable, raising=False)
    try:
        process_group.share_cores()
        assert threads.get_num_threads() == max(1, threads.usable_cores() // 2)
        threads.set_num_threads(3)                       # now the user chose
        process_group.share_cores()
        assert threads.get_num_threads() == 3
    finally:
        threads.set_num_threads(before)
    dist.barrier()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_all_reduce_sums_in_place(dist, dtype):
    r = dist.rank()
    t = tc.tensor(np.arange(6, dtype=dtype).reshape(2, 3) * (r + 1))
    same = dist.all_reduce(t)
    assert same is t
    np.testing.assert_array_equal(t.numpy(), np.arange(6, dtype=dtype).reshape(2, 3) * 3)


def test_all_reduce_ops_and_average(dist):
    r = dist.rank()
    a = np.array([1.0 + r, 5.0 - r])
    np.testing.assert_array_equal(dist.all_reduce(a.copy(), op="max"), [2.0, 5.0])
    np.testing.assert_array_equal(dist.all_reduce(a.copy(), op="min"), [1.0, 4.0])
    np.testing.assert_array_equal(dist.all_reduce(a.copy(), average=True), [1.5, 4.5])
    np.testing.assert_array_equal(dist.all_reduce(a.copy(), op="avg"), [1.5, 4.5])
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(a, op="prod")
    with pytest.raises(ValueError, match="cannot go with op='max'"):
        dist.all_reduce(a, op="max", average=True)
    with pytest.raises(TypeError, match="floating-point array, got dtype int64"):
        dist.all_reduce(np.arange(3), average=True)


def test_all_reduce_of_a_non_contiguous_view_writes_back(dist):
    base = np.zeros((3, 4)) + dist.rank() + 1
    view = base[:, ::2]
    dist.all_reduce(view)
    np.testing.assert_array_equal(base[:, ::2], 3.0)
    np.testing.assert_array_equal(base[:, 1::2], dist.rank() + 1)


def test_broadcast_and_all_gather(dist):
    r = dist.rank()
    t = tc.tensor(np.full(4, 10.0 * (r + 1)))
    dist.broadcast(t, src=1)
    np.testing.assert_array_equal(t.numpy(), 20.0)
    out = [tc.zeros(2, 2, dtype=tc.float64) for _ in range(2)]
    dist.all_gather(out, tc.tensor(np.full((2, 2), float(r))))
    assert [o.numpy()[0, 0] for o in out] == [0.0, 1.0]
    with pytest.raises(ValueError, match="src=2"):
        dist.broadcast(t, src=2)
    with pytest.raises(ValueError, match="3 entries"):
        dist.all_gather(out + out[:1], t)
