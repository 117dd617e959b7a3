"""benchmarks/launches.py: the kernel launches of a training step, counted on the
CPU through the strict fake CuPy, and the launch columns of benchmarks/gpu.py."""
import pytest

from benchmarks import gpu
from benchmarks.launches import count_launches, profile_launches

pytestmark = pytest.mark.kernel_free      # the fake GPU runs the reference kernels


@pytest.fixture(scope="module")
def resnet_counts():
    return [count_launches("resnet18", batch, side, host_steps=1)
            for batch, side in ((2, 64), (3, 96))]


def test_a_resnet18_steps_launches_do_not_depend_on_batch_or_input_size(resnet_counts):
    small, large = resnet_counts
    assert small["launches"] == large["launches"] > 0
    assert small["launches"] == small["cupy"] + small["numba_cuda"]
    assert small["kernel_calls"] == large["kernel_calls"]


def test_each_resnet18_convolution_is_one_im2col_per_pass(resnet_counts):
    calls = resnet_counts[0]["kernel_calls"]
    # 20 convolutions (stem, 16 3x3, three strided 1x1): im2col forward and again for dW;
    # col2im for every dx but the stem's (its input needs no gradient)
    assert calls["im2col"] == 40 and calls["col2im"] == 19
    assert not any(name.startswith("winograd") for name in calls)
    # one numba.cuda launch each
    assert resnet_counts[0]["numba_cuda_by_module"]["kernels.conv_cuda"] == 59


def test_the_fused_kernels_take_fewer_launches_and_one_for_the_optimizer():
    fused, numba = (count_launches("lenet_bn", 2, 28, gpu_kernels=kind, host_steps=1)
                    for kind in ("fused", "numba_cuda"))
    assert fused["launches"] < numba["launches"]
    assert "kernels.bn_cuda" not in fused["numba_cuda_by_module"]     # batch norm is fused
    assert fused["kernel_calls"]["sgd_update_multi"] == 1


def test_the_reference_kernels_count_as_cupy_launches():
    counted = count_launches("lenet_bn", 2, 28, gpu_kernels="reference", host_steps=1)
    assert counted["numba_cuda"] == 0 and counted["launches"] == counted["cupy"] > 0
    with pytest.raises(ValueError, match="gpu_kernels must be one of"):
        count_launches("lenet", 2, 28, gpu_kernels="opencl")


def test_profile_launches_says_why_not_without_a_cuda_pytorch():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/gpu measures it")
    assert "error" in profile_launches(lambda: None, lambda: None)


def test_the_gpu_table_shows_launches_and_host_time_for_gpu_engines():
    run = {"examples_per_s": 1000.0, "step_s": 0.128, "memory_mb": 900.0,
           "host_step_s": 0.0123}
    report = {"machine": {"cpu": "x", "cpus": 16, "python": "3", "numpy": "2", "numba": "0",
                          "torch": None}, "gpu": "H200", "cupy": "14.2.0", "argv": [],
              "date": "today",
              "results": [{"name": "resnet18", "batch": 128, "input_shape": [1, 96, 96],
                           "runs": {"ours-cpu": dict(run, device="cpu"),
                                    "ours-gpu": dict(run, device="cuda",
                                                     launches_per_step=947)}}]}
    table = gpu.markdown(report)
    assert "| launches/step | host ms/step |" in table
    assert "| resnet18 | 1×96×96 | 128 | ours-gpu | 1000.0 | 1.00 | 128.0 | 900 | 947 | 12.3 |" \
        in table
    assert "| resnet18 | 1×96×96 | 128 | ours-cpu | 1000.0 | 1.00 | 128.0 | 900 |  |  |" in table
