"""What ``fit(..., distributed=True)`` changes, one process per rank under mpiexec.

- The process group is joined and the network wrapped in DistributedDataParallel
  (rank 0's weights everywhere; gradients averaged in backward).
- A training DataLoader without a sampler gets a DistributedSampler with its
  shuffle and drop_last (and one seed, rank 0's), so each rank takes its shard
  and every rank makes the same number of steps.  Other iterables must be
  sharded by their owner.  The test set is evaluated whole on every rank (exact,
  at the cost of repeating it).
- Only rank 0 writes: progress bar, printed lines, metrics.jsonl, curves and
  checkpoints.  The epoch's loss, accuracy and example count are summed over
  the ranks first, so the metrics are the global batch's.
- A checkpoint written at the end of an epoch resumes with any number of
  processes (the sampler's order depends on the seed and the epoch only).  On
  Ctrl-C the ranks stop at different steps, and rank 0 alone knows neither the
  global sums nor whether its step was averaged, so nothing is saved: the last
  epoch's checkpoint stays.  A mid-epoch checkpoint of a one-process run is
  refused with a message.
"""
import numpy as np

from ..backend import rng
from . import process_group as pg
from .parallel import DistributedDataParallel
from .sampler import DistributedSampler


def device_for_rank(device):
    """Join the group; ``'cuda'`` becomes this rank's own GPU, ``cuda:<local rank mod
    GPUs>``, made current for NCCL (one process per GPU; never ran: no GPU here)."""
    pg.init()
    if str(device) != "cuda":
        return device
    import cupy
    index = pg.local_rank() % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(index).use()
    return f"cuda:{index}"


def prepare(net, train_iter, meta):
    """Join the group, shard ``train_iter``, wrap ``net``.  Returns (wrapped net,
    whether this rank writes, the run's meta)."""
    pg.init()
    from ..data.loader import DataLoader
    if isinstance(train_iter, DataLoader) and train_iter.sampler is None:
        seed = train_iter.seed
        if seed is None:      # as the DataLoader would: from the engine's generator
            seed = int(rng().integers(2 ** 63))
        train_iter.sampler = DistributedSampler(
            train_iter.dataset, shuffle=train_iter.shuffle, drop_last=train_iter.drop_last,
            seed=pg.broadcast_object(seed))
        train_iter.shuffle = False
    return DistributedDataParallel(net), pg.rank() == 0, meta


def global_sums(sums):
    """An epoch's [loss·n, correct, n, seconds] over every rank (seconds: the slowest)."""
    loss_sum, correct, count, seconds = sums
    totals = pg.all_reduce(np.array([loss_sum, correct, count], dtype=np.float64))
    slowest = pg.all_reduce(np.array([seconds], dtype=np.float64), op="max")
    return [float(totals[0]), int(totals[1]), int(totals[2]), float(slowest[0])]


def check_resumable(path):
    from ..checkpoint import load_checkpoint
    position = load_checkpoint(path).meta.get("position", {})
    if position.get("batch"):
        raise ValueError(f"{path}: saved in the middle of epoch {position['epoch'] + 1} "
                         f"(after {position['batch']} batches); a distributed run resumes "
                         "only from a checkpoint written at the end of an epoch")
