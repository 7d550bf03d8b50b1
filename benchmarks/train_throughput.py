r"""Training and evaluation throughput of the MNIST crVAE on this machine.

  python benchmarks/train_throughput.py --scales=cpu,paper --steps=10

Prints, per scale: start-up time (init + compile of the first step), train images/s
(global batch 128, data-parallel over all local devices, after warm-up), IS-NLL decoder
samples/s (benchmarks/nll_eval.py has more), and this run's fp32 matmul peak.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nll_eval import eval_samples_per_s, machine_line, matmul_gflops  # pylint: disable=g-import-not-at-top
from crvae_jax.train import parallel, setup
from experiments.configs import mnist as mnist_configs


def train_throughput(config, steps: int):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (config.train.batch_size * 4, 28, 28), dtype=np.uint8)
  t0 = time.perf_counter()
  mesh = parallel.make_mesh(config.train.num_devices)
  model = setup.build_model(config)
  tx = setup.build_optimizer(config, 50_000)
  state = parallel.replicate(mesh, setup.init_state(model, tx, 0))
  step_fn = parallel.make_train_step(
      model, tx, parallel.make_objective(config.objective, config.model.num_blocks), mesh,
      num_samples=config.objective.num_samples)
  batches = [parallel.shard_batch(mesh, images[i::4]) for i in range(4)]
  key = jax.random.key(0)
  state, m = step_fn(state, batches[0], key)
  jax.block_until_ready(m)
  startup = time.perf_counter() - t0
  state, m = step_fn(state, batches[1], key)  # warm-up
  jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(steps):
    state, m = step_fn(state, batches[i % 4], key)
  jax.block_until_ready(m)
  per_s = steps * config.train.batch_size / (time.perf_counter() - t)
  return startup, per_s, model, {"params": state.params, "batch_stats": state.batch_stats}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--eval_images", type=int, default=200)
  p.add_argument("--eval_samples", type=int, default=20)
  args = p.parse_args()
  print(f"# {machine_line()}")
  print(f"matmul peak (4096^2 fp32): {matmul_gflops():.0f} GFLOP/s")
  print("| row | scale | params | start-up s | train img/s | eval samples/s |")
  print("|---|---|---|---|---|---|")
  for scale in args.scales.split(","):
    config = mnist_configs.config_at_scale(args.row, scale)
    startup, train_ips, model, variables = train_throughput(config, args.steps)
    eval_sps = eval_samples_per_s(config, model, variables, args.eval_images,
                               args.eval_samples)
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    print(f"| {args.row} | {scale} | {n / 1e6:.2f} M | {startup:.1f} | {train_ips:.1f} | "
          f"{eval_sps:.0f} |", flush=True)


if __name__ == "__main__":
  main()
