r"""A/B of glibc's transparent-huge-page tunable (crvae_jax/host_memory.py) for both
frameworks, same model, same CPU (issue 7).

  python -m benchmarks.ab_host_memory --scales=cpu,paper --frameworks=jax,torch --rounds=4

Per scale and framework, `compare_torch.py` worker processes are started, one with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 ('on'), one without it ('off') and, where the
library is found, one with jemalloc preloaded ('jemalloc', crvae_jax/host_memory.py;
--variants picks others, e.g. jemalloc with huge pages; --step=gan times the GAN step);
the script then times them in turn (the order rotates every round) and prints the
median train img/s and eval samples/s of each and the gain over 'off' (the ratio of
medians, and the median of the per-round ratios against --reference, default 'off',
with the number of rounds ahead), plus
each worker's start-up (process start to the end of its first train step, one sample
each), and the CPU each worker burned while another was timed (a worker that spins while
idle biases the comparison in its own favour). Figures compare only within one run.
"""

import argparse
import os
import statistics
import sys

# pylint: disable=g-import-not-at-top
from benchmarks.compare_torch import (DEFAULT_ROWS, EVAL_IMAGES, STEPS, Worker, ask_timed,
                                      idle_cpu_line)
from crvae_jax import host_memory
from experiments.configs import mnist as mnist_configs


def environments(names=("off", "on", "jemalloc")) -> dict:
  """{name: env} for the variants `names` (in that order): 'off' (no tunable, told not to
  re-exec), 'on' (the tunable), 'jemalloc' (jemalloc preloaded, crvae_jax/host_memory.py;
  left out where its library is not found) and 'jemalloc+omp_passive' (that, plus
  OMP_WAIT_POLICY=PASSIVE: OpenMP threads, e.g. oneDNN's under conv_impl='onednn', sleep
  at once after a parallel region instead of spinning beside XLA's threads),
  'jemalloc+omp_active' (OMP_WAIT_POLICY=ACTIVE: they spin between regions, so that a
  oneDNN call never waits for a sleeping thread to wake) and
  'jemalloc+thp' (jemalloc with transparent huge pages: JEMALLOC_CONF_THP) and
  'jemalloc+muzzy0' (freed pages returned at once: JEMALLOC_CONF_MUZZY0)."""
  unknown = set(names) - set(VARIANTS)
  if unknown or not names or names[0] != "off":
    raise ValueError(f"--variants must start with 'off' and take only {VARIANTS}, "
                     f"got {','.join(names)}")
  off = host_memory.without_hugepages(os.environ)
  off.pop("OMP_WAIT_POLICY", None)
  library = host_memory.find_jemalloc()
  make = {"off": lambda: off, "on": lambda: host_memory.with_hugepages(off),
          "jemalloc": lambda: host_memory.with_jemalloc(off, library),
          "jemalloc+omp_passive": lambda: dict(host_memory.with_jemalloc(off, library),
                                               OMP_WAIT_POLICY="PASSIVE"),
          "jemalloc+omp_active": lambda: dict(host_memory.with_jemalloc(off, library),
                                              OMP_WAIT_POLICY="ACTIVE"),
          "jemalloc+thp": lambda: host_memory.with_jemalloc(
              dict(off, MALLOC_CONF=JEMALLOC_CONF_THP), library),
          "jemalloc+muzzy0": lambda: host_memory.with_jemalloc(
              dict(off, MALLOC_CONF=JEMALLOC_CONF_MUZZY0), library)}
  return {n: make[n]() for n in names if library or "jemalloc" not in n}


VARIANTS = ("off", "on", "jemalloc", "jemalloc+omp_passive", "jemalloc+omp_active",
            "jemalloc+thp", "jemalloc+muzzy0")
# host_memory.JEMALLOC_CONF with transparent huge pages (its setting until 2026-12-05;
# the run of 10:17 UTC called the 4 KiB one 'jemalloc+nothp' and this one 'jemalloc')
JEMALLOC_CONF_THP = host_memory.JEMALLOC_CONF.replace("thp:never", "thp:always").replace(
    "metadata_thp:disabled", "metadata_thp:auto")
# host_memory.JEMALLOC_CONF returning freed pages at once (MADV_DONTNEED) instead of
# lazily (MADV_FREE): the setting of commits 33d873e to f34ad59 on 2026-12-05
JEMALLOC_CONF_MUZZY0 = host_memory.JEMALLOC_CONF.replace("muzzy_decay_ms:30000",
                                                         "muzzy_decay_ms:0")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--measures", default="train,eval")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=10, help="timed train steps per round")
  p.add_argument("--conv_impl", default="", help="model.conv_impl of the JAX workers "
                 "(default: the config's)")
  p.add_argument("--step", default="mnist", choices=STEPS,
                 help="mnist (the crVAE; train and eval) or gan (the Stage1 crVAE-GAN "
                      "train step; --measures=train)")
  p.add_argument("--fused_backward", action="store_true",
                 help="model.fused_backward=True for the JAX workers")
  p.add_argument("--reference", default="off",
                 help="the variant the per-round paired ratios are taken against (e.g. "
                      "jemalloc, the shipped setting)")
  p.add_argument("--variants", default="off,on,jemalloc",
                 help=f"environments to time, from {','.join(VARIANTS)} ('off' first: "
                      "the reference of the gains)")
  args = p.parse_args()
  try:
    envs = environments(tuple(args.variants.split(",")))
  except ValueError as e:
    p.error(str(e))
  if args.reference not in envs:
    p.error(f"--reference={args.reference} is not one of the variants timed: {list(envs)}")
  if args.step == "gan" and args.measures != "train":
    p.error("--step=gan times the train step only: pass --measures=train")
  rows, header, names, idle_lines = [], None, list(envs), []
  for scale in args.scales.split(","):
    chunk = mnist_configs.config_at_scale("crvae", scale).eval.chunk_size
    wargs = argparse.Namespace(step=args.step, row=DEFAULT_ROWS[args.step],
                                steps=args.steps, chunk=chunk, eval_samples=chunk,
                                eval_images=EVAL_IMAGES[scale], conv_impl=args.conv_impl,
                                fused_backward=args.fused_backward)
    for framework in args.frameworks.split(","):
      workers = {name: Worker(framework, scale, wargs, env=env)
                 for name, env in envs.items()}
      if framework == "jax":
        info = workers["off"].ask("info")
        header = (info["runtime"].replace("malloc THP off", "malloc " + " / ".join(names))
                  + f" | conv_impl {info['conv_impl']}")
      start = " / ".join(f"{w.startup_s:.1f}" for w in workers.values())
      idle = {name: [] for name in workers}  # CPU s burned while another was timed
      for measure in args.measures.split(","):
        runs = {name: [] for name in workers}
        for r in range(args.rounds):
          order = names[r % len(names):] + names[:r % len(names)]  # rotates each round
          for name in order:
            runs[name].append(ask_timed(
                workers[name], measure,
                {n: w for n, w in workers.items() if n != name}, idle))
            print(f"  [{scale} {framework} {measure} round {r + 1}] {name:8s} "
                  f"{runs[name][-1]:.1f}", file=sys.stderr, flush=True)
        med = {name: statistics.median(v) for name, v in runs.items()}
        rows.append(f"| {scale} | {framework} | {start} | {measure} | "
                    + " | ".join(f"{med[n]:.1f}" for n in names) + " | "
                    + " | ".join(f"**{med[n] / med['off']:.2f}x**" for n in names[1:])
                    + " | " + " | ".join(paired(runs[n], runs[args.reference])
                                         for n in names if n != args.reference)
                    + " | " + " | ".join(" / ".join(f"{v:.0f}" for v in runs[n])
                                         for n in names) + " |")
      idle_lines.append(f"# {scale} {framework}: {idle_cpu_line(idle)}")
      for w in workers.values():
        w.close()
  print(f"# {header or 'torch workers only'}")
  print(f"# command: python -m benchmarks.ab_host_memory --step={args.step} "
        f"--scales={args.scales} "
        f"--frameworks={args.frameworks} --measures={args.measures} "
        f"--rounds={args.rounds} --steps={args.steps} --variants={','.join(names)}"
        + (f" --reference={args.reference}" if args.reference != "off" else "")
        + (f" --conv_impl={args.conv_impl}" if args.conv_impl else "")
        + (" --fused_backward" if args.fused_backward else ""))
  cols = ([f"start-up s {' / '.join(names)}", "measure (train img/s, eval samples/s)"]
          + [f"{n}" for n in names] + [f"{n} / off" for n in names[1:]]
          + [f"{n} / {args.reference} per round (median; rounds ahead)" for n in names
             if n != args.reference]
          + [f"rounds {n}" for n in names])
  print("| scale | framework | " + " | ".join(cols) + " |")
  print("|---" * (2 + len(cols)) + "|")
  print("\n".join(rows))
  print("\n".join(idle_lines))


def paired(runs: list, reference: list) -> str:
  """'1.12x (4 of 5)': the median over rounds of run / reference of the same round (the
  two timed close together, so a drift of the machine's speed between rounds cancels)
  and in how many rounds the run was ahead."""
  ratios = [a / b for a, b in zip(runs, reference)]
  return f"{statistics.median(ratios):.2f}x ({sum(r > 1 for r in ratios)} of {len(ratios)})"


if __name__ == "__main__":
  main()  # no re-exec: the workers get their environments explicitly
