"""Data-parallel training over MPI: ``mpiexec -n N python train.py``.

    import tinygrad_cnn.distributed as dist
    dist.init()                                   # one process per rank
    net = dist.DistributedDataParallel(net)       # rank 0's weights everywhere
    sampler = dist.DistributedSampler(train_set)  # this rank's shard
    ...                                           # loss.backward() averages the gradients

``process_group`` has the collectives (mpi4py is imported by ``init()`` only),
``parallel`` the ``DistributedDataParallel`` wrapper, ``sampler`` the
``DistributedSampler``; ``nn.SyncBatchNorm`` takes its statistics over every rank.
"""
from .process_group import (abort, abort_on_error, all_gather, all_gather_object, all_reduce,
                            barrier, broadcast, broadcast_object, init, is_initialized,
                            local_rank, rank, world_size)
from .sampler import DistributedSampler
from .parallel import DistributedDataParallel

__all__ = ["DistributedDataParallel", "DistributedSampler", "abort", "abort_on_error",
           "all_gather", "all_gather_object", "all_reduce", "barrier", "broadcast",
           "broadcast_object", "init", "is_initialized", "local_rank", "rank", "world_size"]
