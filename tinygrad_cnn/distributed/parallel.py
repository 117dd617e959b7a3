"""``DistributedDataParallel``: one model replica per process, gradients averaged.

Every rank runs the same network on its own shard of the batch.  If every rank
starts from the same weights and applies the same averaged gradient, the
replicas stay identical, and the step equals one process's step on the whole
batch (the loss being a mean over the batch: the mean of the ranks' mean
losses is the global mean when the shards are equally large).

- At wrap, rank 0's parameters and buffers are broadcast, after a check that
  every rank holds the same names, shapes and dtypes (gathered first, so a
  mismatch is a clear error on every rank, not a garbled broadcast).
- Gradients are averaged in *buckets*: parameters, in reverse registration
  order (roughly the order backward finishes them), are packed into flat
  buffers of at most ``bucket_cap_mb``; each bucket is one ``Allreduce``.
  Fewer, larger messages cost less latency than one call per tensor.
- The reduction is triggered from backward itself by a post-accumulate-grad
  hook on every parameter: a bucket goes as soon as all its parameters have
  their gradient, buckets strictly in order, so every rank issues the same
  collectives in the same order.  (This engine's backward sums each leaf's
  gradient over the whole pass before handing it over, so the hooks all fire
  at the end of backward: there is no communication to overlap with compute.)
- ``no_sync()`` skips the reduction, for gradient accumulation: the next
  backward outside it averages the accumulated ``.grad``.
"""
import contextlib

from ..backend import get_array_module
from ..nn.module import Module
from . import process_group as pg


class _Bucket:
    """Parameters reduced together through one flat buffer."""

    def __init__(self, params):
        self.params = params
        self.ids = {id(p) for p in params}     # by id: a Tensor's == is elementwise
        self.ready = set()

    def reduce(self, world):
        grads = [p.grad.data for p in self.params]
        xp = get_array_module(grads[0])
        flat = xp.concatenate([g.reshape(-1) for g in grads])
        pg.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g[...] = flat[offset:offset + g.size].reshape(g.shape)
            offset += g.size
        self.ready.clear()


def _make_buckets(params, cap_bytes):
    """Consecutive parameters of one dtype and device, at most ``cap_bytes`` a bucket
    (a larger parameter gets a bucket of its own)."""
    buckets, current, size = [], [], 0
    for p in params:
        nbytes = p.data.nbytes
        kind = (p.data.dtype, type(p.data))
        if current and (size + nbytes > cap_bytes or kind != (current[0].data.dtype,
                                                              type(current[0].data))):
            buckets.append(_Bucket(current))
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(_Bucket(current))
    return buckets


class DistributedDataParallel(Module):
    """Wrap ``module`` so that backward averages its gradients over every rank.

    ``broadcast_buffers``: before each training forward, rank 0's buffers (batch
    norm's running statistics) are copied to every rank, as PyTorch does, so the
    replicas stay identical even with per-rank batch statistics.
    ``state_dict()`` and ``load_state_dict()`` are the wrapped module's (same keys).
    """

    def __init__(self, module, broadcast_buffers=True, bucket_cap_mb=25):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError("DistributedDataParallel: expected a Module, got "
                            f"{type(module).__name__}")
        if bucket_cap_mb <= 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got "
                             f"{bucket_cap_mb}")
        pg._require("DistributedDataParallel")
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self._world = pg.world_size()
        self._sync = True
        _check_same_state(module)
        with_grad = [p for p in module.parameters() if p.requires_grad]
        self._buckets = _make_buckets(with_grad[::-1], int(bucket_cap_mb * 2 ** 20))
        self._next_bucket = 0
        self._sync_state()
        self._handles = []
        for index, bucket in enumerate(self._buckets):
            for p in bucket.params:
                self._handles.append(p.register_post_accumulate_grad_hook(
                    self._make_hook(index)))

    # ------------------------------------------------------------ wrap time
    def _sync_state(self):
        for t in self.module.state_dict(keep_vars=True).values():
            pg.broadcast(t, src=0)

    # ------------------------------------------------------------ backward
    def _make_hook(self, index):
        def on_grad(param):
            if not self._sync:
                return
            self._buckets[index].ready.add(id(param))
            self._reduce_ready_buckets()
        return on_grad

    def _reduce_ready_buckets(self):
        """Reduce the next buckets in order while they are complete, so every rank
        makes the same calls in the same order whatever order the hooks fire in."""
        while self._next_bucket < len(self._buckets):
            bucket = self._buckets[self._next_bucket]
            if len(bucket.ready) < len(bucket.params):
                return
            bucket.reduce(self._world)
            self._next_bucket = self._next_bucket + 1
        self._next_bucket = 0

    def _check_previous_reduction(self):
        if self._next_bucket == 0 and not any(b.ready for b in self._buckets):
            return
        waiting = self._buckets[self._next_bucket:]
        missing = [name for name, p in self.module.named_parameters()
                   if any(id(p) in b.ids and id(p) not in b.ready for b in waiting)]
        for bucket in self._buckets:        # start afresh after the error
            bucket.ready.clear()
        self._next_bucket = 0
        raise RuntimeError(
            "DistributedDataParallel: the previous backward did not give every parameter a "
            f"gradient, so its gradients were not averaged; parameters without one: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Every "
            "parameter must take part in the loss on every rank.")

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate local gradients without averaging them;
        the first backward after it averages the accumulated sum."""
        previous = self._sync
        self._sync = False
        try:
            yield
        finally:
            self._sync = previous

    # ------------------------------------------------------------ module
    def forward(self, *args, **kwargs):
        self._check_previous_reduction()
        if self.training and self.broadcast_buffers:
            for _, buf in self.module.named_buffers():
                if buf is not None:
                    pg.broadcast(buf, src=0)
        return self.module(*args, **kwargs)

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        return self.module.state_dict(destination, prefix, keep_vars)

    def load_state_dict(self, state_dict, strict=True):
        return self.module.load_state_dict(state_dict, strict)


def _check_same_state(module):
    """Raise on every rank when the ranks' parameters/buffers differ in name, shape
    or dtype: a broadcast between mismatched arrays would fail obscurely or hang."""
    mine = [(name, tuple(t.shape), str(t.dtype))
            for name, t in module.state_dict(keep_vars=True).items()]
    every = pg.all_gather_object(mine)
    reference = every[0]
    for rank, theirs in enumerate(every[1:], start=1):
        if theirs == reference:
            continue
        ref, other = dict((n, s) for n, *s in reference), dict((n, s) for n, *s in theirs)
        problems = [f"{n}: rank 0 has {ref[n]}, rank {rank} has {other[n]}"
                    for n in ref if n in other and ref[n] != other[n]]
        problems += [f"{n}: only on rank 0" for n in ref if n not in other]
        problems += [f"{n}: only on rank {rank}" for n in other if n not in ref]
        raise ValueError("DistributedDataParallel: the ranks' models differ (parameter "
                         "and buffer names, shapes and dtypes must match): "
                         + "; ".join(problems[:10]))
