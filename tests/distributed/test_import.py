"""The engine never loads MPI unless distributed training is asked for."""
import subprocess
import sys

import pytest

# the distributed machinery is the same under every kernel set: run under the first set
# only (tests/conftest.py).
pytestmark = pytest.mark.kernel_free


def test_importing_the_engine_and_its_distributed_module_loads_no_mpi():
    code = ("import sys, tinygrad_cnn, tinygrad_cnn.distributed, tinygrad_cnn.train, "
            "tinygrad_cnn.cli; print('mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_collectives_before_init_name_the_missing_call():
    import tinygrad_cnn.distributed as dist
    if dist.is_initialized():
        pytest.skip("the process group is initialised in this process (under mpiexec)")
    with pytest.raises(RuntimeError, match=r"all_reduce: .* call tinygrad_cnn.distributed.init"):
        dist.all_reduce([1.0])


@pytest.mark.parametrize("cores, ranks, share", [(16, 2, 8), (16, 3, 5), (2, 2, 1), (2, 4, 1),
                                                 (8, 1, 8)])
def test_each_rank_gets_its_share_of_the_machines_cores(cores, ranks, share):
    from tinygrad_cnn.distributed.process_group import threads_per_rank
    assert threads_per_rank(cores, ranks) == share
