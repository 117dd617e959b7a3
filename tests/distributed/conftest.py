"""The distributed tests.

Those marked ``mpi`` need two processes: they run as
``mpiexec -n 2 python -m pytest -m mpi tests/distributed`` (.ci/run does) and
skip, with the reason, in a plain ``pytest`` run or without mpi4py.  The
others (the sampler, the fault test that starts its own ``mpiexec``, the
import check) run in the ordinary suite.
"""
import importlib.util
import os
import shutil

import pytest

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
# Set by MPICH's and Open MPI's launchers in every process they start.
UNDER_MPIEXEC = any(name in os.environ for name in ("PMI_SIZE", "PMI_RANK",
                                                    "OMPI_COMM_WORLD_SIZE"))
MPIEXEC = shutil.which("mpiexec")


def pytest_configure(config):
    config.addinivalue_line("markers", "mpi: runs in 2 processes under "
                            "'mpiexec -n 2 python -m pytest -m mpi tests/distributed'")


@pytest.fixture
def dist():
    """The process group of the 2 ranks this test runs in."""
    if not HAVE_MPI4PY:
        pytest.skip("mpi4py is not installed (pip install -e '.[mpi]')")
    if not UNDER_MPIEXEC:
        pytest.skip("needs 2 processes: mpiexec -n 2 python -m pytest -m mpi tests/distributed")
    import tinygrad_cnn.distributed as dist
    # pytest reports a failing test itself: no abort from the excepthook.
    dist.init(abort_on_exception=False)
    if dist.world_size() != 2:
        pytest.skip(f"written for 2 ranks, running in {dist.world_size()}")
    return dist


def on_every_rank(dist, check):
    """Run the assertions of ``check()`` and fail on *every* rank if they fail on any:
    a rank that left a test early would enter the next test's collectives while the
    other still waits in this one's, and the job would hang instead of failing."""
    try:
        check()
        error = None
    except AssertionError as e:
        error = str(e)
    errors = dist.all_gather_object(error)
    failed = {rank: e for rank, e in enumerate(errors) if e is not None}
    if failed:
        raise AssertionError("; ".join(f"rank {rank}: {e}" for rank, e in failed.items()))
