"""How fast does a training step run?  Forward, cross-entropy, backward and an SGD step
on one fixed random batch, timed after a warm-up step (which also compiles the Numba
kernels), on the CPU and -- when CuPy sees one -- on the GPU.

    python examples/benchmark.py                       # LeNet, ResNet-18, AlexNet
    python examples/benchmark.py --networks lenet,nin --steps 5
    python examples/benchmark.py --quick               # LeNet, a small batch

For the full comparison with PyTorch and peak memory, in fresh processes and several
rounds, see ``python -m benchmarks.cpu`` (benchmarks/README.md).
"""
import time

import chapter
import models
import tinygrad_cnn as tc
import tinygrad_cnn.nn.functional as F
from tinygrad_cnn import optim

BATCH = {"lenet": 256, "resnet18": 64, "alexnet": 32}      # as in benchmarks/results.md


def examples_per_second(name, device, batch, steps):
    net = models.get(name).to(device)
    X = tc.rand(batch, *models.spec(name).input_shape).to(device)
    y = tc.randint(0, 10, (batch,)).to(device)
    optimizer = optim.SGD(net.parameters(), lr=0.01)

    def step():
        loss = F.cross_entropy(net(X), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()          # .item() waits for a GPU to finish the step

    step()                          # warm-up: kernel compilation, memory pools
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main():
    p = chapter.parser(__doc__.splitlines()[0])
    p.add_argument("--networks", default="lenet,resnet18,alexnet")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    names = ["lenet"] if args.quick else args.networks.split(",")
    devices = ["cpu"] + (["cuda"] if chapter.default_device() == "cuda" else [])
    print(f"{'network':<12}{'device':<8}{'batch':>6}{'examples/sec':>16}")
    for name in names:
        batch = args.batch_size or (16 if args.quick else BATCH.get(name, 32))
        for device in devices:
            speed = examples_per_second(name, device, batch, 1 if args.quick else args.steps)
            print(f"{name:<12}{device:<8}{batch:>6}{speed:>16.1f}")


if __name__ == "__main__":
    main()
