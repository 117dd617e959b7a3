"""Training-step throughput on the CPU: this engine against PyTorch, side by side.

    python -m benchmarks.cpu [--steps 20] [--threads 2]

Builds the d2l LeNet (Fashion-MNIST size, batch 256) in both engines with the
same weights and alternates timed training steps (forward, cross-entropy,
backward, SGD step) between them, so machine noise hits both alike.  Prints
examples/s for each and the ratio.  (The full per-network table comes with the
kernels issue.)
"""
import argparse
import os
import statistics
import time

import numpy as np


def lenet(nn):
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def ours_step(batch):
    import tinygrad_cnn as tc
    import tinygrad_cnn.nn.functional as F
    from tinygrad_cnn import nn, optim
    net = lenet(nn)
    opt = optim.SGD(net.parameters(), lr=0.9)
    X, y = tc.tensor(batch[0]), tc.tensor(batch[1])

    def step():
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step, net


def torch_step(batch, weights, threads):
    import torch
    torch.set_num_threads(threads)
    net = lenet(torch.nn)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    opt = torch.optim.SGD(net.parameters(), lr=0.9)
    X, y = torch.from_numpy(batch[0]), torch.from_numpy(batch[1])

    def step():
        loss = torch.nn.functional.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def time_steps(step, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    batch = (rng.random((args.batch, 1, 28, 28), dtype=np.float32),
             rng.integers(0, 10, args.batch))
    ours, net = ours_step(batch)
    runners = {"tinygrad_cnn": ours}
    try:
        weights = {k: v.numpy() for k, v in net.state_dict().items()}
        runners["torch"] = torch_step(batch, weights, args.threads)
    except ImportError:
        print("torch not installed: measuring tinygrad_cnn alone")
    for step in runners.values():      # warm up (allocations, BLAS threads)
        step()
    results = {name: [] for name in runners}
    for _ in range(args.rounds):       # alternate, so noise hits both alike
        for name, step in runners.items():
            results[name].append(args.batch / time_steps(step, args.steps))
    print(f"LeNet training step, batch {args.batch}, {args.threads} threads "
          f"(median step of {args.steps}, best of {args.rounds} rounds):")
    best = {name: max(v) for name, v in results.items()}
    for name, rate in best.items():
        print(f"  {name:13s} {rate:9.0f} examples/s")
    if "torch" in best:
        print(f"  ratio tinygrad_cnn / torch = {best['tinygrad_cnn'] / best['torch']:.2f}")


if __name__ == "__main__":
    main()
