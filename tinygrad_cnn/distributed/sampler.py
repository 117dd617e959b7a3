"""``DistributedSampler``: each rank's share of a data set, as PyTorch's.

Every rank draws the same permutation of the whole data set (from ``seed`` and
the epoch), makes its length a multiple of ``num_replicas`` -- by repeating
indices from its start (``drop_last=False``) or by dropping its tail
(``drop_last=True``) -- and takes every ``num_replicas``-th index from position
``rank``.  So the shards are disjoint (apart from the repeated padding) and
together cover the data set.

Resuming at another world size: ranks stepping through their shards in
lockstep have together consumed a *prefix* of the epoch's permutation (k
batches of b on each of R ranks: its first k·b·R entries), whatever R is.
``state_dict()`` records that global position; a sampler of any size loaded
with it shares out the rest of the same permutation.
"""
import math
import numbers

import numpy as np


class DistributedSampler:
    """Indices of rank ``rank``'s shard of ``dataset`` (anything with ``len``).

    num_replicas, rank: the world size and this rank (default: the process group's).
    shuffle, seed:      a permutation from ``seed`` and the epoch (``set_epoch``).
    drop_last:          drop the tail that does not divide evenly instead of padding.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False):
        if num_replicas is None or rank is None:
            from . import process_group as pg
            num_replicas = pg.world_size() if num_replicas is None else num_replicas
            rank = pg.rank() if rank is None else rank
        if not isinstance(num_replicas, numbers.Integral) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be an int >= 1, got "
                             f"{num_replicas!r}")
        if not isinstance(rank, numbers.Integral) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: invalid rank {rank!r}, rank should be in "
                             f"the interval [0, {num_replicas - 1}]")
        self.dataset, self.num_replicas, self.rank = dataset, int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0
        self.start = 0            # examples of this epoch all ranks together have consumed

    def set_epoch(self, epoch):
        """Use epoch ``epoch``'s permutation from now on (call before each epoch), from
        its beginning."""
        self.epoch, self.start = int(epoch), 0

    def _remaining(self):
        """How many of the epoch's permuted indices are still to be shared out."""
        return len(self.dataset) - self.start

    @property
    def num_samples(self):
        n = self._remaining()
        if self.drop_last:
            return n // self.num_replicas
        return math.ceil(n / self.num_replicas)

    @property
    def total_size(self):
        return self.num_samples * self.num_replicas

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        order = order[self.start:]
        if self.drop_last:
            order = order[:self.total_size]
        elif len(order) < self.total_size:        # pad by repeating from the start
            repeats = math.ceil(self.total_size / max(len(order), 1))
            order = np.tile(order, repeats)[:self.total_size]
        return iter(order[self.rank:self.total_size:self.num_replicas].tolist())

    # ------------------------------------------------------------ resuming
    def state_dict(self, consumed=0):
        """The position after every rank has taken ``consumed`` indices of its shard
        this epoch: independent of the world size, so any size can resume from it."""
        return {"epoch": self.epoch, "seed": self.seed,
                "start": min(self.start + consumed * self.num_replicas, len(self.dataset))}

    def load_state_dict(self, state):
        self.epoch, self.seed, self.start = int(state["epoch"]), int(state["seed"]), \
            int(state["start"])

    def __repr__(self):
        return (f"DistributedSampler(rank {self.rank} of {self.num_replicas}, "
                f"{len(self)} of {len(self.dataset)} indices, shuffle={self.shuffle}, "
                f"seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})")
