r"""Training throughput of the Stage1 VAE-GAN / crVAE-GAN step (JAX) on this machine.

  python -m benchmarks.gan_throughput --row=crvaegan --scales=cpu,paper --steps=5

The step is crvae_jax.families.stage1's (the one `experiments.main` trains with), on
random images in [-1, 1]. Scales: 'cpu' is experiments/configs/rgb.py:emoji_ROW,cpu
(width 8, LSTM 64, latent 4x4x32, batch 32), 'paper' is rgb.py:celeba_ROW (width 32,
LSTM 512, latent 4x4x64, batch 64); only the learning rates and loss weights differ
between datasets, not the networks. benchmarks/compare_torch.py --step=gan times it
against the PyTorch port (benchmarks/torch_gan_reference.py).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.flops import count_flops
from benchmarks.nll_eval import kernels_line, machine_line, matmul_gflops
from benchmarks.train_throughput import timed_images_per_s
from crvae_jax import host_memory, sharding
from crvae_jax.families import stage1
from experiments.configs import rgb as rgb_configs

GAN_ROWS = ("crvaegan", "vaegan")
SCALE_CONFIGS = {"cpu": "emoji_{row},cpu", "paper": "celeba_{row}"}


def config_at_scale(row: str, scale: str):
  """The Stage1 config of model `row` ('crvaegan' or 'vaegan') at `scale` (see the
  module doc)."""
  if row not in GAN_ROWS:
    raise ValueError(f"unknown GAN row {row!r}; choose one of {list(GAN_ROWS)}")
  if scale not in SCALE_CONFIGS:
    raise ValueError(f"unknown scale {scale!r}; choose one of {list(SCALE_CONFIGS)}")
  return rgb_configs.get_config(SCALE_CONFIGS[scale].format(row=row))


def random_images(batch: int, num_batches: int = 4, seed: int = 0) -> np.ndarray:
  """Uniform images in [-1, 1], [num_batches * batch, 64, 64, 3] float32 (NHWC);
  batch i is rows i::num_batches. The PyTorch port trains on the same numbers."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (num_batches * batch, 64, 64, 3)).astype(np.float32)


class JaxGanTrainer:
  """The Stage1 step of `config` on all local devices (config.train.num_devices),
  built and compiled on construction (`startup_s`: init + compile + the first step),
  then timed by `run`."""

  def __init__(self, config):
    images = random_images(config.train.batch_size)
    t0 = time.perf_counter()
    self.config = config
    self.family = stage1.Family(config)
    self.state = sharding.replicate(self.family.mesh, self.family.init_state())
    self.step_fn = self.family.make_step()
    self.batches = [sharding.shard_batch(self.family.mesh, images[i::4]) for i in range(4)]
    self.gated = []  # d_update_skipped of every step run
    self._steps(1)
    self.startup_s = time.perf_counter() - t0

  def _steps(self, n: int, first: int = 0) -> dict:
    skipped = []
    for i in range(n):
      self.state, m = self.step_fn(self.state, self.batches[(first + i) % 4])
      skipped.append(m["d_update_skipped"])
    jax.block_until_ready(m)
    self.gated += [float(s) for s in skipped]
    return m

  def run(self, steps: int, warmup: int = 1) -> float:
    """Train images/s (real images per step = train.batch_size) over `steps` steps
    after `warmup` untimed ones."""
    return timed_images_per_s(self._steps, steps, warmup, self.config.train.batch_size,
                              ("loss_g", "loss_d"))

  def param_counts(self) -> dict:
    return param_counts(self.state)


def param_counts(state) -> dict:
  """Parameters per network of a GanState (concrete or abstract): gen, mi, disc, all."""
  n = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  counts = {"gen": n(state.gen["params"]), "mi": n(state.mi.get("params", {})),
            "disc": n(state.disc["params"])}
  counts["all"] = sum(counts.values())
  return counts


def train_flops_per_image(config, batch: int = 8) -> float:
  """FLOPs of one Stage1 step per real image (benchmarks/flops.py conventions: the
  plain XLA convolutions, LSTM scans counted T times), on one device at `batch`.

  The step's jaxpr holds both `vjp` pullbacks in full (each computes the cotangents of
  the generator *and* the discriminator; XLA drops the unused halves when it compiles),
  so dead code is removed first (`count_flops(live_only=True)`): what is counted is
  forward + dL_G/d(generator, MI head) + dL_D/d(discriminator)."""
  config = config.copy_and_resolve_references()
  config.model.conv_impl = "xla"
  config.train.batch_size = batch
  config.train.num_devices = 1
  family = stage1.Family(config, mesh=sharding.make_mesh(1))
  images = jax.ShapeDtypeStruct((batch, 64, 64, 3), jnp.float32)
  return count_flops(family.make_step(), family.init_state(abstract=True), images,
                     live_only=True) / batch


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvaegan", help=f"one of {list(GAN_ROWS)}")
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  print(f"# {machine_line()}")
  print(kernels_line(config_at_scale(args.row, args.scales.split(",")[0])))
  peak = matmul_gflops()
  print(f"matmul peak (4096^2 fp32): {peak:.0f} GFLOP/s")
  print("| row | scale | params gen / MI / disc | start-up s | train img/s | GFLOP/image | "
        "of peak | D updates gated |")
  print("|---" * 8 + "|")
  for scale in args.scales.split(","):
    config = config_at_scale(args.row, scale)
    trainer = JaxGanTrainer(config)
    ips = trainer.run(args.steps)
    flops = train_flops_per_image(config)
    n = trainer.param_counts()
    print(f"| {args.row} | {scale} | {n['gen']:,} / {n['mi']:,} / {n['disc']:,} | "
          f"{trainer.startup_s:.1f} | {ips:.1f} | {flops / 1e9:.2f} | "
          f"{ips * flops / 1e9 / peak:.0%} | {sum(trainer.gated):.0f} of "
          f"{len(trainer.gated)} |", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
