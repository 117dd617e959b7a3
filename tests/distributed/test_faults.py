"""A rank that raises ends the whole job with a message naming it (it starts its own
``mpiexec -n 2``, so it runs in the ordinary suite, not under mpiexec)."""
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import HAVE_MPI4PY, MPIEXEC, UNDER_MPIEXEC

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = [pytest.mark.kernel_free, pytest.mark.skipif(
    not HAVE_MPI4PY or MPIEXEC is None or UNDER_MPIEXEC,
    reason="needs mpi4py and mpiexec (pip install -e '.[mpi]'), outside mpiexec")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_job(tmp_path, body, timeout=120):
    """``body`` in 2 processes; a hang would end in TimeoutExpired, failing the test."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_rank_that_raises_aborts_every_rank_naming_itself(tmp_path):
    job = run_job(tmp_path, """
        import tinygrad_cnn.distributed as dist
        dist.init()
        if dist.rank() == 1:
            raise ValueError("bad batch on rank 1")
        dist.barrier()                      # rank 0 would wait here forever
        print("rank 0 passed the barrier")
    """)
    assert job.returncode != 0
    assert "rank 1 of 2 failed with ValueError: bad batch on rank 1" in job.stderr
    assert "aborting every rank" in job.stderr
    assert "passed the barrier" not in job.stdout


def test_abort_on_error_covers_code_that_exits_with_an_error_status(tmp_path):
    job = run_job(tmp_path, """
        import sys
        import tinygrad_cnn.distributed as dist
        dist.init(abort_on_exception=False)
        with dist.abort_on_error():
            if dist.rank() == 0:
                sys.exit("train: no such data directory")
            dist.barrier()
    """)
    assert job.returncode != 0
    assert "rank 0 of 2 failed with SystemExit: train: no such data directory" in job.stderr
