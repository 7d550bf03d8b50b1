r"""Throughput of annealed importance sampling (crvae_jax.ais) on the MNIST models.

  python -m benchmarks.ais_throughput --rows=vae,crvae

Per row, at CPU scale (width 8, LSTM hidden 128; randomly initialised: the cost does not
depend on the weights), compiles forward AIS once on --images random binary images, then
times one pass of --steps annealing steps x --chains chains x --leapfrog leapfrog steps
and prints: HMC transitions x chains per second, leapfrog steps (one decoder forward and
backward pass each) x chains per second, and the seconds per image of the row's config
defaults (eval.ais) and of --plan (T x C x L, the settings of experiments/estimator_gap),
extrapolated linearly in T x C x L from the measured rate.
"""

import argparse
import time

import jax
import numpy as np

from benchmarks.nll_eval import machine_line
from crvae_jax import ais, sharding
from crvae_jax.families import mnist as mnist_family
from experiments.configs import mnist as mnist_configs


def measure(row: str, *, images: int, steps: int, chains: int, leapfrog: int,
            batch_size: int):
  """(config, seconds of the first call (compile + one pass), seconds of one timed
  pass) for `row` at CPU scale."""
  config = mnist_configs.get_config(row + ",cpu")
  model = mnist_family.build_model(config)
  variables = mnist_family.init_variables(model, 0)
  mesh = sharding.make_mesh()
  data = (np.random.default_rng(1).random((images, 28, 28)) < 0.15).astype(np.uint8)
  settings = ais.Settings(num_steps=steps, num_chains=chains, leapfrog_steps=leapfrog,
                          step_size=config.eval.ais.step_size)
  run = lambda x: ais.estimate_log_likelihood(model, variables, x, mesh, settings,
                                              batch_size=batch_size, progress=False)
  t = time.perf_counter()
  run(data[:batch_size])  # compile (and one batch)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  result = run(data)
  seconds = time.perf_counter() - t
  if not np.all(np.isfinite(result.log_weights)):
    raise FloatingPointError(f"{row}: non-finite AIS log-weights")
  return config, compile_s, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rows", default="vae,crvae")
  parser.add_argument("--images", type=int, default=8)
  parser.add_argument("--steps", type=int, default=21, help="T (T - 1 transitions)")
  parser.add_argument("--chains", type=int, default=4)
  parser.add_argument("--leapfrog", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=8, help="images per call")
  parser.add_argument("--plan", default="1000x16x10", help="T x C x L to extrapolate to")
  args = parser.parse_args()
  plan = [int(v) for v in args.plan.split("x")]
  print(machine_line())
  print(f"{args.images} images, T={args.steps} ({args.steps - 1} transitions), "
        f"C={args.chains}, L={args.leapfrog}, batch {args.batch_size} images")
  print("| row | first call s (compile + one pass) | transitions x chains / s | "
        "leapfrog x chains / s | s / image, config eval.ais (T x C x L) | s / image, plan "
        f"{args.plan} |")
  print("|---|---|---|---|---|---|")
  for row in args.rows.split(","):
    config, compile_s, seconds = measure(
        row, images=args.images, steps=args.steps, chains=args.chains,
        leapfrog=args.leapfrog, batch_size=args.batch_size)
    transitions = (args.steps - 1) * args.chains * args.images / seconds
    leapfrogs = transitions * args.leapfrog
    a = config.eval.ais
    per_image = lambda t, c, l: (t - 1) * c * l / leapfrogs
    print(f"| {row} | {compile_s:.1f} | {transitions:.0f} | {leapfrogs:.0f} | "
          f"{per_image(a.num_steps, a.num_chains, a.leapfrog_steps):.2f} "
          f"({a.num_steps}x{a.num_chains}x{a.leapfrog_steps}) | {per_image(*plan):.1f} |")
  print(f"jax {jax.__version__}, {len(jax.devices())} device(s)")


if __name__ == "__main__":
  main()
