r"""Speed and memory of the importance-sampled NLL estimator (crvae_jax.likelihood).

  python -m benchmarks.nll_eval --scales=cpu,paper

Prints, per scale of the MNIST crVAE: decoder samples/s of the estimator (compiled once,
then timed on --images images x --samples samples at the config's chunk and batch size),
the model's FLOPs per decoder sample (benchmarks/flops.py: counted from the traced plain
formulation, LSTM scans times T, encoder amortised over K), the FLOP rate as a fraction
of this run's fp32 matmul peak, and the compiled scratch memory of the estimator at
K=100 and K=10,000 (same chunk, min(chunk, 100)). --rss also runs the estimator in fresh
processes at K=100 and K=10,000 (2 images, chunk 100, CPU scale) and prints their peak
RSS.

  python -m benchmarks.nll_eval --scales=cpu --samples=1000 --images=40 \
      --chunks=20x50,50x20,100x10,250x8 --rounds=3

--chunks instead compares decoding chunk x images-per-call settings at one K: every
setting compiled first, then timed in alternating rounds (median and every round).
"""

import argparse
import resource
import shlex
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.flops import count_flops
from crvae_jax import host_memory, likelihood, randomness
from crvae_jax import sharding
from crvae_jax.families import mnist as mnist_family
from crvae_jax.models import layers
from experiments.configs import mnist as mnist_configs
from experiments.provenance import REPO, cpu_fields  # REPO: cwd of workers


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
  """This machine's fp32 matmul rate (4096^2 jnp.dot, best of `repeats`), GFLOP/s."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def machine_line(runtime: str | None = None) -> str:
  """'date | cpu | cores | host memory | runtime' for a benchmark's output header;
  runtime defaults to this process's jax version, backend and device count; host memory
  says which malloc runs and whether it asks for transparent huge pages
  (crvae_jax/host_memory.py)."""
  runtime = runtime or f"jax {jax.__version__} {jax.default_backend()} x{len(jax.devices())}"
  memory = host_memory.description()
  return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | "
          f"{' | '.join(cpu_fields())} | "
          f"{memory} | {runtime}")


def kernels_line(config, training: bool = True) -> str:
  """'# kernels: conv onednn + fused backward (model.conv_impl 'fastest')': the kernels
  `config`'s model runs here, for a benchmark's header beside machine_line. training=False
  (evaluation-only benchmarks): without the fused backward, which only training runs."""
  m = config.model
  fused = training and m.get("fused_backward", False)
  return (f"# kernels: {layers.kernels_label(m.conv_impl, fused)} "
          f"(model.conv_impl {m.conv_impl!r})")


def random_variables(config):
  model = mnist_family.build_model(config)
  return model, mnist_family.init_variables(model, config.train.seed)


def eval_runner(config, model, variables, num_images: int, num_samples: int,
                chunk_size: int | None = None):
  """Compiles the estimator on num_images random binary images x K = num_samples at
  the config's batch size and chunk (or `chunk_size`; capped at K as in
  crvae_jax.likelihood); returns `timed() -> decoder samples/s` of one pass."""
  mesh = sharding.make_mesh(config.train.num_devices)
  images = (np.random.default_rng(1).random((num_images, 28, 28)) < 0.15).astype(np.uint8)
  estimator = likelihood.make_estimator(model, mesh, num_samples=num_samples,
                                        chunk_size=chunk_size or config.eval.chunk_size)
  variables, key = sharding.replicate(mesh, variables), jax.random.key(0)
  batch = config.eval.batch_size  # read now: the caller may change the config afterwards
  run = lambda data: sharding.map_batches(lambda b, off: estimator(variables, b, off, key),
                                          data, mesh, batch)
  run(images[:batch])  # compile

  def timed() -> float:
    t = time.perf_counter()
    out = run(images)
    per_s = num_images * num_samples / (time.perf_counter() - t)
    if not np.all(np.isfinite(out)):
      raise FloatingPointError("non-finite log p(x) estimate")
    return per_s
  timed.hlo_text = lambda: estimator.lower(  # the compiled estimator, for profiles
      variables, sharding.shard_batch(mesh, images[:batch]), jnp.int32(0), key
  ).compile().as_text()
  return timed


def eval_samples_per_s(config, model, variables, num_images: int, num_samples: int):
  """Decoder samples/s of the estimator (compiled once, then timed)."""
  return eval_runner(config, model, variables, num_images, num_samples)()


def flops_per_sample(config, num_samples: int) -> float:
  """Model FLOPs per decoder sample: sample_terms per sample + encoder / K."""
  config = config.copy_and_resolve_references()
  config.model.conv_impl = "xla"  # count the plain formulation, not our CPU kernels
  model = mnist_family.build_model(config)
  # Shapes only (nothing is compiled or run): FLOPs are counted from the traced jaxpr.
  variables = jax.eval_shape(lambda: mnist_family.init_variables(model, 0))
  chunk = 16
  x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  posterior = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.encode),
                             variables, x)
  keys = randomness.example_keys(jax.random.key(0), jnp.arange(1))
  eps1, eps2 = randomness.latent_noise(keys, jnp.arange(chunk), model.latent_shape,
                                       model.top_dim)
  per_chunk = count_flops(lambda v, *a: model.apply(v, *a, method=model.sample_terms),
                          variables, x, posterior, eps1, eps2)
  encoder = count_flops(lambda v, x: model.apply(v, x, method=model.encode), variables, x)
  return per_chunk / chunk + encoder / num_samples


def scratch_bytes(config, model, variables, num_samples: int, chunk_size: int) -> int:
  """Compiled temporary memory of the estimator for one batch at this K and chunk."""
  mesh = sharding.make_mesh(config.train.num_devices)
  images = np.zeros((config.eval.batch_size, 28, 28), np.uint8)
  estimator = likelihood.make_estimator(model, mesh, num_samples=num_samples,
                                        chunk_size=chunk_size)
  compiled = estimator.lower(sharding.replicate(mesh, variables),
                             sharding.shard_batch(mesh, images), 0,
                             jax.random.key(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def child_peak_rss(num_samples: int) -> None:
  """(Run in a fresh process.) Score 2 images at K, print the process's peak RSS."""
  config = mnist_configs.get_config("crvae,cpu")
  config.eval.chunk_size, config.eval.batch_size = 100, 2
  model, variables = random_variables(config)
  eval_samples_per_s(config, model, variables, 2, num_samples)
  print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def peak_rss_mb(num_samples: int) -> float:
  out = subprocess.run([sys.executable, "-m", "benchmarks.nll_eval",
                        f"--child_rss={num_samples}"], check=True, capture_output=True,
                       text=True, cwd=REPO).stdout
  return float(out.split("PEAK_RSS_MB")[-1].split()[0])


def parse_chunks(text: str) -> list:
  """'20x50,50x20' -> [(20, 50), (50, 20)]; a clear error for anything else."""
  pairs = []
  for item in text.split(","):
    parts = item.strip().split("x")
    if len(parts) != 2 or not all(q.isdigit() and int(q) > 0 for q in parts):
      raise SystemExit(f"--chunks: {item!r} is not CHUNKxBATCH with positive integers")
    pairs.append((int(parts[0]), int(parts[1])))
  return pairs


def compare_chunks(args) -> None:
  """Decoder samples/s of each chunk x batch setting at K=--samples, alternating rounds."""
  pairs = parse_chunks(args.chunks)
  print(f"# {machine_line()}")
  print(kernels_line(mnist_configs.config_at_scale(args.row, args.scales.split(",")[0]),
                     training=False))
  print(f"# command: python -m benchmarks.nll_eval {shlex.join(sys.argv[1:])}")
  print(f"matmul peak (4096^2 fp32 jnp.dot, best of 5): {matmul_gflops():.0f} GFLOP/s")
  print("| row | scale | K | chunk x batch | decoder samples/s (median) | rounds |")
  print("|---|---|---|---|---|---|")
  for scale in args.scales.split(","):
    config = mnist_configs.config_at_scale(args.row, scale)
    model, variables = random_variables(config)
    runners = {}
    for chunk, batch in pairs:
      config.eval.batch_size = batch
      runners[(chunk, batch)] = eval_runner(config, model, variables, args.images,
                                            args.samples, chunk_size=chunk)
    rates = {pair: [] for pair in pairs}
    for r in range(args.rounds):
      for pair in (pairs if r % 2 == 0 else pairs[::-1]):
        rates[pair].append(runners[pair]())
    for (chunk, batch), got in rates.items():
      print(f"| {args.row} | {scale} | {args.samples} | {chunk} x {batch} | "
            f"{np.median(got):.0f} | {'/'.join(f'{v:.0f}' for v in got)} |", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--images", type=int, default=200)
  p.add_argument("--samples", type=int, default=100)
  p.add_argument("--rss", action="store_true", help="also measure peak RSS (2 processes)")
  p.add_argument("--child_rss", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--chunks", default="", help="compare CHUNKxBATCH settings, e.g. "
                 "20x50,50x20 (samples decoded at once per image x images per call)")
  p.add_argument("--rounds", type=int, default=3, help="--chunks: alternating rounds")
  args = p.parse_args()
  if args.child_rss:
    child_peak_rss(args.child_rss)
    return
  if args.chunks:
    compare_chunks(args)
    return
  print(f"# {machine_line()}")
  print(kernels_line(mnist_configs.config_at_scale(args.row, args.scales.split(",")[0]),
                     training=False))
  peak = matmul_gflops()
  print(f"matmul peak (4096^2 fp32 jnp.dot, best of 5): {peak:.0f} GFLOP/s")
  print("| row | scale | chunk x batch | decoder samples/s | MFLOP/sample | GFLOP/s | "
        "of peak | scratch K=100 | scratch K=10,000 |")
  print("|---|---|---|---|---|---|---|---|---|")
  for scale in args.scales.split(","):
    config = mnist_configs.config_at_scale(args.row, scale)
    model, variables = random_variables(config)
    sps = eval_samples_per_s(config, model, variables, args.images, args.samples)
    flops = flops_per_sample(config, args.samples)
    chunk = min(config.eval.chunk_size, 100)  # the same chunk at both K
    scratch = [scratch_bytes(config, model, variables, k, chunk) / 2 ** 20
               for k in (100, 10_000)]
    print(f"| {args.row} | {scale} | {config.eval.chunk_size} x {config.eval.batch_size} | "
          f"{sps:.0f} | {flops / 1e6:.1f} | {sps * flops / 1e9:.1f} | "
          f"{sps * flops / 1e9 / peak:.0%} | {scratch[0]:.0f} MiB | {scratch[1]:.0f} MiB |",
          flush=True)
  if args.rss:
    rss = {k: peak_rss_mb(k) for k in (100, 10_000)}
    print(f"peak RSS, CPU-scale crVAE, 2 images, chunk 100, fresh process: K=100 "
          f"{rss[100]:.0f} MB, K=10,000 {rss[10_000]:.0f} MB "
          f"({rss[10_000] / rss[100] - 1:+.1%})")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
