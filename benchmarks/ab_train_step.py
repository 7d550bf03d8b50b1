r"""A/B of the MNIST crVAE's train step under different CPU kernel choices (issue 7).

  python -m benchmarks.ab_train_step --scale=paper --variants=default,ynn_convs,xla
  python -m benchmarks.ab_train_step --scale=cpu --variants=default,matmul_deconv \
      --measure=eval --eval_k=1000

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
  matmul_deconv  as default, but every transposed conv in fast_conv's matmul +
            overlap-add form, whatever its input size (default: the sub-pixel form from
            8x8 inputs up).
  phase_chunk_4mb, phase_chunk_8mb  as default, the sub-pixel transposed convs in batch
            chunks of about 4 or 8 MB of conv output (default 32 MB).
  +KEY=VALUE[+KEY=VALUE...]  as default, plus these XLA compiler options (VALUE true,
            false, an integer or a string), e.g. +xla_cpu_prefer_vector_width=512.
            Separate the variants with ';' when a value holds commas.
"""

import argparse
import contextlib
import shlex
import time
import types
from unittest import mock

import numpy as np

# pylint: disable=g-import-not-at-top
from benchmarks.nll_eval import eval_runner, machine_line, random_variables
from benchmarks.train_throughput import JaxTrainer
from crvae_jax import host_memory
from crvae_jax import compiled
from crvae_jax.models import fast_conv
from experiments.configs import mnist as mnist_configs

# Earlier forms of one kernel, each a patch of the library while a program is traced.
KERNEL_VARIANTS = {
    # every transposed conv in fast_conv's matmul + overlap-add form, whatever its size
    "matmul_deconv": lambda: mock.patch.object(fast_conv, "_PHASE_MIN_PIXELS", 10**9),
    # the sub-pixel transposed convs in batch chunks of about 4 MB / 8 MB of conv output
    # (default _PHASE_CHUNK_BYTES, 32 MB); the same numbers bit for bit
    "phase_chunk_4mb": lambda: mock.patch.object(fast_conv, "_PHASE_CHUNK_BYTES", 4 << 20),
    "phase_chunk_8mb": lambda: mock.patch.object(fast_conv, "_PHASE_CHUNK_BYTES", 8 << 20),
}


def kernel_variant(name: str):
  """Context of KERNEL_VARIANTS[name]. It acts on programs traced inside it: the
  trainers here trace and compile on construction, and are not retraced afterwards."""
  return KERNEL_VARIANTS[name]()


VARIANTS = ("default", "ynn_convs", "xla", *KERNEL_VARIANTS)


def extra_compiler_options(variant: str) -> dict:
  """'+a=true+b=3' -> {'a': True, 'b': 3}; a clear error for anything else."""
  options = {}
  for item in variant.split("+")[1:]:
    key, sep, value = item.partition("=")
    if not sep or not key.startswith("xla_"):
      raise ValueError(f"variant {variant!r}: {item!r} is not xla_KEY=VALUE")
    low = value.lower()
    options[key] = (low == "true") if low in ("true", "false") else (
        int(value) if value.lstrip("-").isdigit() else value)
  return options


def variant_config_and_context(variant: str, scale: str, row: str):
  """(config, context): build and compile the variant's program inside `context`."""
  if variant.startswith("+"):
    config = mnist_configs.config_at_scale(row, scale)
    config.model.conv_impl = "cpu"
    config.model.fused_backward = False
    options = {**compiled._CPU_COMPILER_OPTIONS,  # pylint: disable=protected-access
               **extra_compiler_options(variant)}
    return config, mock.patch.object(compiled, "_CPU_COMPILER_OPTIONS", options)
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
  config = mnist_configs.config_at_scale(row, scale)
  config.model.conv_impl = "xla" if variant == "xla" else "cpu"
  config.model.fused_backward = False  # the kernels these variants compare, alone
  if variant == "ynn_convs":
    return config, mock.patch.object(compiled, "compiler_options",
                                     lambda conv_impl="auto": None)
  if variant in KERNEL_VARIANTS:
    return config, kernel_variant(variant)
  return config, contextlib.nullcontext()


def build(variant: str, scale: str, row: str, measure: str, eval_k: int):
  """A timer of the variant: `run(steps) -> img/s` (train) or `run(_) -> decoder
  samples/s` (eval: the IS estimator on 32 random images at K=eval_k), compiled now."""
  config, context = variant_config_and_context(variant, scale, row)
  with context:
    if measure == "train":
      return JaxTrainer(config)  # compiles its step on construction
    t0 = time.perf_counter()
    model, variables = random_variables(config)
    timed = eval_runner(config, model, variables, 32, eval_k)  # compiles
  return types.SimpleNamespace(run=lambda steps: timed(),
                               startup_s=time.perf_counter() - t0)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", default="paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--variants", default="default,ynn_convs")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=5, help="train steps per round (train)")
  p.add_argument("--measure", choices=("train", "eval"), default="train",
                 help="eval: the IS estimator's decoder samples/s (config's chunk and "
                 "batch) instead of train img/s")
  p.add_argument("--eval_k", type=int, default=1000,
                 help="--measure=eval: K (one round: one pass over 32 images)")
  args = p.parse_args()
  names = args.variants.split(";" if ";" in args.variants else ",")
  for n in names:
    if n.startswith("+"):
      try:
        extra_compiler_options(n)
      except ValueError as e:
        p.error(f"--variants: {e}")
  unknown = [n for n in names if n not in VARIANTS and not n.startswith("+")]
  if unknown:
    p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
  trainers = {n: build(n, args.scale, args.row, args.measure, args.eval_k)
              for n in names}
  times = {n: [] for n in names}
  for r in range(args.rounds):
    for n in (names if r % 2 == 0 else names[::-1]):
      times[n].append(trainers[n].run(args.steps))
  print(f"# {machine_line()}")
  print(f"# command: python -m benchmarks.ab_train_step --scale={args.scale} "
        f"--row={args.row} --variants={shlex.quote(args.variants)} --rounds={args.rounds} "
        + (f"--steps={args.steps}" if args.measure == "train" else
           f"--measure=eval --eval_k={args.eval_k}"))
  unit = "train img/s" if args.measure == "train" else "eval samples/s"
  print(f"| variant | start-up s | {unit} (median) | rounds |")
  print("|---|---|---|---|")
  for n in names:
    print(f"| {n} | {trainers[n].startup_s:.1f} | {np.median(times[n]):.1f} | "
          + " / ".join(f"{t:.0f}" for t in times[n]) + " |")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
