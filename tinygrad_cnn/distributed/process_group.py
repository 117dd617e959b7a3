"""The process group: which process am I, how many are we, and the collectives.

One process per rank, started by ``mpiexec -n N``; ``init()`` takes MPI's
``COMM_WORLD``.  mpi4py is imported by ``init()`` and nowhere else, so
``import tinygrad_cnn`` (and every single-process run) never loads MPI.

The collectives work in place on a Tensor's array (or on an array), like
``torch.distributed``'s:

- NumPy arrays go over MPI as raw buffers (``Allreduce``/``Bcast``/``Allgather``
  with the buffer protocol: no pickling);
- CuPy arrays go over NCCL (``cupy.cuda.nccl``) when CuPy has it, else through
  host memory (copy to NumPy, MPI, copy back).  Neither CuPy path has ever run:
  the development machine has no GPU.

A rank that raises must not leave the others waiting forever in a collective:
``init()`` installs an excepthook that prints the rank and the error and calls
``MPI_Abort``, which ends every rank of the job (``abort_on_error`` does the same
for code that catches its exceptions, such as the CLI).

Ranks on one machine share its cores: each would otherwise start as many
threads as the machine has cores (OpenBLAS's default), N ranks N times as
many.  Unless you chose a thread count (``set_num_threads`` before ``init()``,
or ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``), ``init()`` gives each rank
its share, the cores divided by the ranks on its machine (at least 1), as
``torchrun`` sets one thread per process (benchmarks/results_distributed.md).
"""
import contextlib
import sys
import time
import traceback

import numpy as np

from kernels import threads
from ..backend import get_array_module

_comm = None          # the mpi4py communicator once init() ran
_MPI = None           # the mpi4py.MPI module once init() ran
_nccl = None          # a cupy.cuda.nccl.NcclCommunicator, made at the first CuPy collective

REDUCE_OPS = ("sum", "avg", "max", "min")


def init(comm=None, abort_on_exception=True):
    """Join the process group: ``comm`` (an mpi4py communicator) or ``MPI.COMM_WORLD``.

    Calling it again does nothing.  With ``abort_on_exception`` an uncaught
    exception on any rank aborts the whole job with a message naming the rank.
    """
    global _comm, _MPI
    if _comm is not None:
        return
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("tinygrad_cnn.distributed needs mpi4py and an MPI library: "
                          "pip install -e \".[mpi]\" (installs mpi4py and mpich)") from e
    _MPI, _comm = MPI, comm if comm is not None else MPI.COMM_WORLD
    if abort_on_exception:
        sys.excepthook = _abort_excepthook
    share_cores()


def share_cores():
    """Give this rank its share of its machine's cores (the module docstring),
    unless the user chose a thread count."""
    if not threads.chosen_by_user():
        threads.set_num_threads(threads_per_rank(threads.usable_cores(), ranks_here()))


def threads_per_rank(cores, ranks):
    """Each rank's share of a machine's ``cores`` when ``ranks`` run on it."""
    return max(1, cores // ranks)


def ranks_here():
    """How many ranks of the group run on this machine."""
    return _require("ranks_here").Split_type(_MPI.COMM_TYPE_SHARED).Get_size()


def is_initialized():
    return _comm is not None


def _require(what):
    if _comm is None:
        raise RuntimeError(f"tinygrad_cnn.distributed.{what}: the process group is not "
                           "initialised; call tinygrad_cnn.distributed.init() first")
    return _comm


def rank():
    return _require("rank").Get_rank()


def world_size():
    return _require("world_size").Get_size()


def local_rank():
    """This process's rank among the group's processes on the same machine (to pick
    one GPU per process)."""
    comm = _require("local_rank")
    return comm.Split_type(_MPI.COMM_TYPE_SHARED).Get_rank()


def barrier():
    _require("barrier").Barrier()


# ---------------------------------------------------------------- faults
def _failure_message(exc_type, exc, tb):
    where = f"rank {_comm.Get_rank()} of {_comm.Get_size()}" if _comm is not None else "a rank"
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    return (f"{text}\ntinygrad_cnn.distributed: {where} failed with "
            f"{exc_type.__name__}: {exc}; aborting every rank\n")


def abort(exc_type, exc, tb, errorcode=1):
    """Print the failure, naming this rank, and end every rank of the job."""
    sys.stderr.write(_failure_message(exc_type, exc, tb))
    sys.stderr.flush()
    # mpiexec forwards each rank's stderr through its own proxy process, and
    # MPI_Abort has the launcher kill every process of the job: without a
    # moment for the proxy to pass the message on, a busy machine can lose it
    # (seen once: the job ended non-zero with an empty stderr).
    time.sleep(0.5)
    _comm.Abort(errorcode)


def _abort_excepthook(exc_type, exc, tb):
    abort(exc_type, exc, tb)


@contextlib.contextmanager
def abort_on_error():
    """Abort the whole job when the body raises (a SystemExit with a non-zero code
    included), so the other ranks do not hang in their next collective."""
    try:
        yield
    except SystemExit as e:
        if e.code not in (None, 0) and _comm is not None and _comm.Get_size() > 1:
            abort(type(e), e, e.__traceback__, errorcode=e.code if isinstance(e.code, int)
                  else 1)
        raise
    except BaseException as e:
        if _comm is not None and _comm.Get_size() > 1:
            abort(type(e), e, e.__traceback__)
        raise


# ---------------------------------------------------------------- collectives
def _array_of(tensor, what):
    from ..tensor import Tensor
    if isinstance(tensor, Tensor):
        return tensor.data
    if hasattr(tensor, "__array_interface__") or hasattr(tensor, "__cuda_array_interface__"):
        return tensor
    raise TypeError(f"tinygrad_cnn.distributed.{what}: expected a Tensor or an array, got "
                    f"{type(tensor).__name__}")


def _check_op(op, what):
    if op not in REDUCE_OPS:
        raise ValueError(f"tinygrad_cnn.distributed.{what}: op must be one of {REDUCE_OPS}, "
                         f"got {op!r}")


def all_reduce(tensor, op="sum", average=False):
    """Reduce ``tensor`` over every rank, in place, and return it.

    ``op``: "sum" (default), "avg" (the sum over world_size), "max" or "min";
    ``average=True`` is the same as ``op="avg"``.  Every rank passes an array
    of the same shape and dtype.
    """
    comm = _require("all_reduce")
    _check_op(op, "all_reduce")
    if average and op not in ("sum", "avg"):
        raise ValueError(f"tinygrad_cnn.distributed.all_reduce: average=True averages a sum; "
                         f"it cannot go with op={op!r}")
    op = "avg" if average else op
    array = _array_of(tensor, "all_reduce")
    if op == "avg" and array.dtype.kind not in "fc":     # checked before any rank sends
        raise TypeError("tinygrad_cnn.distributed.all_reduce: averaging needs a "
                        f"floating-point array, got dtype {array.dtype}")
    _backend_for(array).all_reduce(array, "sum" if op == "avg" else op)
    if op == "avg":
        array /= comm.Get_size()
    return tensor


def broadcast(tensor, src=0):
    """Overwrite ``tensor`` on every rank with rank ``src``'s, in place; return it."""
    comm = _require("broadcast")
    if not 0 <= src < comm.Get_size():
        raise ValueError(f"tinygrad_cnn.distributed.broadcast: src={src} is not a rank of "
                         f"a group of {comm.Get_size()}")
    array = _array_of(tensor, "broadcast")
    _backend_for(array).broadcast(array, src)
    return tensor


def all_gather(tensor_list, tensor):
    """Fill ``tensor_list`` (one Tensor or array per rank) with every rank's ``tensor``,
    in rank order, as ``torch.distributed.all_gather``.  Same shape on every rank."""
    comm = _require("all_gather")
    if len(tensor_list) != comm.Get_size():
        raise ValueError(f"tinygrad_cnn.distributed.all_gather: tensor_list has "
                         f"{len(tensor_list)} entries for a group of {comm.Get_size()}")
    array = _array_of(tensor, "all_gather")
    outputs = [_array_of(t, "all_gather") for t in tensor_list]
    for out in outputs:
        if tuple(out.shape) != tuple(array.shape) or out.dtype != array.dtype:
            raise ValueError(f"tinygrad_cnn.distributed.all_gather: every output must have "
                             f"the input's shape {tuple(array.shape)} and dtype {array.dtype}"
                             f", got {tuple(out.shape)} {out.dtype}")
    xp = get_array_module(array)
    gathered = xp.empty((comm.Get_size(),) + tuple(array.shape), dtype=array.dtype)
    _backend_for(array).all_gather(xp.ascontiguousarray(array), gathered)
    for out, part in zip(outputs, gathered):
        out[...] = part
    return tensor_list


def all_gather_object(obj):
    """Every rank's (small, picklable) ``obj``, in rank order: for metadata such as
    shapes, not for tensors (pickled)."""
    return _require("all_gather_object").allgather(obj)


def broadcast_object(obj, src=0):
    """Rank ``src``'s (small, picklable) ``obj`` on every rank."""
    return _require("broadcast_object").bcast(obj, root=src)


# ---------------------------------------------------------------- transports
class _MPIBuffers:
    """NumPy arrays as raw MPI buffers.  A non-contiguous array goes through a
    contiguous copy, written back after."""

    @staticmethod
    def _mpi_op(op):
        return {"sum": _MPI.SUM, "max": _MPI.MAX, "min": _MPI.MIN}[op]

    def all_reduce(self, array, op):
        buf = array if array.flags.c_contiguous else np.ascontiguousarray(array)
        _comm.Allreduce(_MPI.IN_PLACE, buf, op=self._mpi_op(op))
        if buf is not array:
            array[...] = buf

    def broadcast(self, array, src):
        buf = array if array.flags.c_contiguous else np.ascontiguousarray(array)
        _comm.Bcast(buf, root=src)
        if buf is not array:
            array[...] = buf

    def all_gather(self, array, out):
        _comm.Allgather(array, out)


class _ThroughHost:
    """CuPy arrays without NCCL: to host memory, over MPI, and back (never ran here)."""

    def all_reduce(self, array, op):
        import cupy
        host = array.get()
        _MPIBuffers().all_reduce(host, op)
        array[...] = cupy.asarray(host)      # also into a non-contiguous view

    def broadcast(self, array, src):
        import cupy
        host = array.get()
        _MPIBuffers().broadcast(host, src)
        array[...] = cupy.asarray(host)

    def all_gather(self, array, out):
        host = np.empty(out.shape, dtype=out.dtype)
        _MPIBuffers().all_gather(array.get(), host)
        out.set(host)


class _NCCL:
    """CuPy arrays over NCCL, one communicator per process made from a unique id that
    rank 0 broadcasts over MPI.  Written to NCCL's documented calls; never ran (no GPU
    on the development machine)."""

    def __init__(self, nccl):
        self.nccl = nccl

    def _comm(self):
        global _nccl
        if _nccl is None:
            uid = _comm.bcast(self.nccl.get_unique_id() if _comm.Get_rank() == 0 else None)
            _nccl = self.nccl.NcclCommunicator(_comm.Get_size(), uid, _comm.Get_rank())
        return _nccl

    def _dtype(self, dtype):
        table = {"float16": self.nccl.NCCL_FLOAT16, "float32": self.nccl.NCCL_FLOAT32,
                 "float64": self.nccl.NCCL_FLOAT64, "int32": self.nccl.NCCL_INT32,
                 "int64": self.nccl.NCCL_INT64}
        if dtype.name not in table:
            raise TypeError(f"tinygrad_cnn.distributed: NCCL cannot reduce dtype {dtype}")
        return table[dtype.name]

    @staticmethod
    def _stream():
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def all_reduce(self, array, op):
        import cupy
        buf = cupy.ascontiguousarray(array)
        ops = {"sum": self.nccl.NCCL_SUM, "max": self.nccl.NCCL_MAX,
               "min": self.nccl.NCCL_MIN}
        self._comm().allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtype(buf.dtype),
                               ops[op], self._stream())
        if buf is not array:
            array[...] = buf

    def broadcast(self, array, src):
        import cupy
        buf = cupy.ascontiguousarray(array)
        self._comm().bcast(buf.data.ptr, buf.size, self._dtype(buf.dtype), src,
                           self._stream())
        if buf is not array:
            array[...] = buf

    def all_gather(self, array, out):
        self._comm().allGather(array.data.ptr, out.data.ptr, array.size,
                               self._dtype(array.dtype), self._stream())


def _backend_for(array):
    if isinstance(array, np.ndarray):
        return _MPIBuffers()
    try:
        from cupy.cuda import nccl
        if not getattr(nccl, "available", True):
            raise ImportError
    except ImportError:
        return _ThroughHost()
    return _NCCL(nccl)
