r"""Training and evaluation throughput of the MNIST crVAE on this machine.

  python -m benchmarks.train_throughput --scales=cpu,paper --steps=10

Prints, per scale: start-up time (init + compile of the first step), train images/s
(global batch 128, data-parallel over all local devices, after warm-up), IS-NLL decoder
samples/s (benchmarks/nll_eval.py has more), and this run's fp32 matmul peak.
"""

import argparse
import time

import jax
import numpy as np

from crvae_jax import host_memory
from benchmarks.nll_eval import (eval_samples_per_s, kernels_line, machine_line,
                                 matmul_gflops)
from crvae_jax import sharding
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import mnist_step
from experiments.configs import mnist as mnist_configs


def timed_images_per_s(run_steps, steps: int, warmup: int, batch_size: int,
                       loss_names=("loss",)) -> float:
  """Images/s of `run_steps(n, first) -> last metrics` over `steps` steps after `warmup`
  untimed ones (the batches cycle from `first`); FloatingPointError if a loss in
  `loss_names` of the last step is not finite. The benchmarks' trainers all time this."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if warmup:
    run_steps(warmup, 0)
  t = time.perf_counter()
  m = run_steps(steps, 1)
  per_s = steps * batch_size / (time.perf_counter() - t)
  losses = {k: float(m[k]) for k in loss_names}
  if not all(np.isfinite(v) for v in losses.values()):
    raise FloatingPointError(f"non-finite loss(es) {losses}")
  return per_s


class JaxTrainer:
  """The MNIST train step of `config` on all local devices, built and compiled on
  construction (`startup_s`: init + compile + the first step), then timed by `run`."""

  def __init__(self, config):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.train.batch_size * 4, 28, 28), dtype=np.uint8)
    t0 = time.perf_counter()
    self.config, self.mesh = config, sharding.make_mesh(config.train.num_devices)
    self.model = mnist_family.build_model(config)
    tx = mnist_family.build_optimizer(config, 50_000)
    self.state = sharding.replicate(self.mesh, mnist_family.init_state(self.model, tx, 0))
    self.step_fn = mnist_step.make_train_step(
        self.model, tx, mnist_step.make_objective(config.objective, config.model.num_blocks),
        self.mesh, num_samples=config.objective.num_samples)
    self.batches = [sharding.shard_batch(self.mesh, images[i::4]) for i in range(4)]
    self.key = jax.random.key(0)
    self._steps(1)
    self.startup_s = time.perf_counter() - t0

  def _steps(self, n: int, first: int = 0):
    for i in range(n):
      self.state, m = self.step_fn(self.state, self.batches[(first + i) % 4], self.key)
    jax.block_until_ready(m)
    return m

  def run(self, steps: int, warmup: int = 1) -> float:
    """Train images/s over `steps` steps after `warmup` untimed ones."""
    return timed_images_per_s(self._steps, steps, warmup, self.config.train.batch_size)

  def variables(self) -> dict:
    return {"params": self.state.params, "batch_stats": self.state.batch_stats}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--eval_images", type=int, default=200)
  p.add_argument("--eval_samples", type=int, default=20)
  args = p.parse_args()
  print(f"# {machine_line()}")
  print(kernels_line(mnist_configs.config_at_scale(args.row, args.scales.split(",")[0])))
  print(f"matmul peak (4096^2 fp32): {matmul_gflops():.0f} GFLOP/s")
  print("| row | scale | params | start-up s | train img/s | eval samples/s |")
  print("|---|---|---|---|---|---|")
  for scale in args.scales.split(","):
    config = mnist_configs.config_at_scale(args.row, scale)
    trainer = JaxTrainer(config)
    startup, train_ips = trainer.startup_s, trainer.run(args.steps)
    variables = trainer.variables()
    eval_sps = eval_samples_per_s(config, trainer.model, variables, args.eval_images,
                                  args.eval_samples)
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    print(f"| {args.row} | {scale} | {n / 1e6:.2f} M | {startup:.1f} | {train_ips:.1f} | "
          f"{eval_sps:.0f} |", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
