"""benchmarks/cpu.py --mode eval: what it times is the evaluation pass d2l runs
every epoch (eval mode, forward under no_grad), on the same weights as training."""
import numpy as np

from benchmarks import cpu


def test_eval_mode_times_the_evaluation_pass():
    import tinygrad_cnn as tc
    X, y = cpu.batch_for((1, 28, 28), 4)
    step = cpu.training_setup("numba", "lenet_bn", 0.1, check_input=X, mode="eval")(X, y)
    out, again = step(), step()
    reference = cpu.build_ours("lenet_bn")          # the same weights (seed 0)
    reference.eval()
    with tc.no_grad():
        expected = reference(tc.tensor(X)).numpy()
    assert out.shape == (4, 10) and out.grad_fn is None     # no graph built
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(again.numpy(), out.numpy())   # no weight changed
