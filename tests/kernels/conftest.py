import pytest

from kernels import threads


@pytest.fixture
def two_threads():
    """Two threads for the test, the count before put back after it
    (test_shares.py has its own, which also lets every stack split)."""
    before = threads.get_num_threads()
    threads.set_num_threads(2)
    yield
    threads.set_num_threads(before)
