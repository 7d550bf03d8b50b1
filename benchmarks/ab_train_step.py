r"""A/B of the MNIST crVAE's train step under different CPU kernel choices (issue 7).

  python -m benchmarks.ab_train_step --scale=paper --variants=default,ynn_convs,xla

Builds one train step per variant in this process, then times them alternately
(--rounds rounds of --steps steps each, the order flipping every round) and prints the
median img/s of each. On a VM whose speed drifts, only figures from one run compare.

Variants:
  default   conv_impl='cpu' compiled with `compiled.compiler_options` (what 'auto' runs on
            CPU).
  ynn_convs conv_impl='cpu' compiled with XLA's default options (YNNPACK also runs the
            convolutions).
  xla       conv_impl='xla': the plain XLA ops with XLA's default options (the GPU/TPU
            formulation).
"""

import argparse
from unittest import mock

import numpy as np

# pylint: disable=g-import-not-at-top
from benchmarks.nll_eval import machine_line
from benchmarks.train_throughput import JaxTrainer
from crvae_jax import host_memory
from crvae_jax import compiled
from experiments.configs import mnist as mnist_configs

VARIANTS = ("default", "ynn_convs", "xla")


def build(variant: str, scale: str, row: str) -> JaxTrainer:
  config = mnist_configs.config_at_scale(row, scale)
  if variant == "xla":
    config.model.conv_impl = "xla"
  elif variant == "ynn_convs":
    config.model.conv_impl = "cpu"
    with mock.patch.object(compiled, "compiler_options", lambda conv_impl="auto": None):
      return JaxTrainer(config)  # compiles its step on construction
  elif variant == "default":
    config.model.conv_impl = "cpu"
  else:
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
  return JaxTrainer(config)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", default="paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--variants", default="default,ynn_convs")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  names = args.variants.split(",")
  trainers = {n: build(n, args.scale, args.row) for n in names}
  times = {n: [] for n in names}
  for r in range(args.rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
      times[n].append(trainers[n].run(args.steps))
  print(f"# {machine_line()}")
  print(f"# command: python -m benchmarks.ab_train_step --scale={args.scale} "
        f"--row={args.row} --variants={args.variants} --rounds={args.rounds} "
        f"--steps={args.steps}")
  print("| variant | start-up s | train img/s (median) | rounds |")
  print("|---|---|---|---|")
  for n in names:
    print(f"| {n} | {trainers[n].startup_s:.1f} | {np.median(times[n]):.1f} | "
          + " / ".join(f"{t:.0f}" for t in times[n]) + " |")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
