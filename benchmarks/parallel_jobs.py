r"""One job on every core, or one job per core: which does more MNIST work per hour here?

  python -m benchmarks.parallel_jobs --rounds=5 \
      --jax_variant=onednn+fused --scale=cpu --write_results

The Table 1 runner (experiments/mnist_table.py) trains and evaluates dozens of small
(CPU-scale) models, one job after another, each on every core. This measures whether
jobs run side by side, each pinned to its own core, would do more of that work per
second. Three JAX workers of benchmarks/compare_torch.py (the same train step and
IS-NLL estimator as its `jax` worker) are started one after the other: one that may use
every core ("1 job x N cores") and one per core, pinned to it with sched_setaffinity (XLA's
and oneDNN's thread pools size themselves to the cores a process may use). Each round
times the unpinned worker alone, then every pinned worker at the same moment (each timing
its own steps while the others run theirs), training first, then the evaluation; the
order of the two flips every round. Reported: medians over rounds of the unpinned rate
and of the pinned workers' summed rate, and their ratio ("> 1: run jobs side by side").
--write_results appends the block, with command, date and commit, to
benchmarks/RESULTS.md.
"""

import argparse
import os
import statistics
import sys

from benchmarks import compare_torch
from crvae_jax import host_memory
from experiments.configs import mnist as mnist_configs

RESULTS_SECTION = ("## One job per core or one job on every core "
                   "(python -m benchmarks.parallel_jobs --write_results; issue 17)")
RESULTS_MARKER = "<!-- parallel_jobs --write_results appends its runs above this line -->"
MEASURES = ("train", "eval")


def command_line() -> str:
  return "python -m benchmarks.parallel_jobs " + " ".join(sys.argv[1:])


def measure_together(workers, what: str) -> list:
  """Each worker's own rate of `what`, all started at the same moment."""
  for w in workers:
    w.send(what)
  return [w.receive() for w in workers]


def run(args) -> dict:
  if not hasattr(os, "sched_getaffinity"):
    raise SystemExit("parallel_jobs pins workers to cores with sched_setaffinity: Linux "
                     "only")
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < 2:
    raise SystemExit(f"parallel_jobs: this process may use {len(cores)} core(s); it "
                     "compares one job on every core with one job per core, so it needs 2+")
  name = "jax" if not args.jax_variant else f"jax-{args.jax_variant}"
  whole = compare_torch.Worker(name, args.scale, args)
  pinned = [compare_torch.Worker(name, args.scale, args, cpus={c}) for c in cores]
  runs = {(who, what): [] for who in ("whole", "pinned") for what in MEASURES}
  each = {what: [] for what in MEASURES}  # the pinned workers' own rates per round
  for r in range(args.rounds):
    for what in MEASURES:
      for who in (("whole", "pinned") if r % 2 == 0 else ("pinned", "whole")):
        if who == "whole":
          runs[(who, what)].append(whole.ask(what))
        else:
          rates = measure_together(pinned, what)
          each[what].append(rates)
          runs[(who, what)].append(sum(rates))
        print(f"  [round {r + 1}] {who:6s} {what:5s} {runs[(who, what)][-1]:.1f}",
              file=sys.stderr, flush=True)
  peaks = {"whole": whole.ask("peak"), "pinned": pinned[0].ask("peak")}
  info = {"whole": whole.ask("info"), "pinned": pinned[0].ask("info")}
  for w in [whole, *pinned]:
    w.close()
  return {"name": name, "cores": cores, "runs": runs, "each": each, "peaks": peaks,
          "info": info, "median": {k: statistics.median(v) for k, v in runs.items()}}


def report(res, args) -> str:
  n, info, m = len(res["cores"]), res["info"], res["median"]
  lines = [f"# {info['whole']['runtime']} | pinned workers: "
           f"{info['pinned']['runtime'].split(' | ')[2]} each | conv_impl "
           f"{info['whole']['conv_impl']}",
           f"# command: {command_line()}",
           f"# {args.row}, {args.scale} scale, {info['whole']['params']:,} parameters; "
           f"train: batch {mnist_configs.config_at_scale(args.row, args.scale).train.batch_size}"
           f", {args.steps} steps per timing; eval: K={args.eval_samples} (one chunk), "
           f"{args.eval_images} images per timing",
           "",
           f"| measure | 1 job x {n} cores | {n} jobs x 1 core (sum) | ratio |",
           "|---|---|---|---|"]
  units = {"train": "img/s", "eval": "decoder samples/s"}
  for what in MEASURES:
    one, side = m[("whole", what)], m[("pinned", what)]
    lines.append(f"| {what} ({units[what]}) | {one:.1f} | {side:.1f} | "
                 f"**{side / one:.2f}x** |")
  lines += ["",
            f"matmul peak (4096^2 fp32, after the rounds): {res['peaks']['whole']:.0f} "
            f"GFLOP/s on {n} cores, {res['peaks']['pinned']:.0f} on 1",
            "Every timing (the rounds in order): " + "; ".join(
                f"{who} {what} " + "/".join(f"{v:.0f}" for v in res["runs"][(who, what)])
                for who in ("whole", "pinned") for what in MEASURES),
            "Pinned workers, each (per round): " + "; ".join(
                f"{what} " + " ".join("+".join(f"{v:.0f}" for v in rates)
                                      for rates in res["each"][what])
                for what in MEASURES)]
  return "\n".join(lines)


def write_results(block: str, path: str = compare_torch.RESULTS) -> None:
  """Appends this run's block to its section of RESULTS.md (created at the end)."""
  compare_torch.write_results(block, path, RESULTS_SECTION, RESULTS_MARKER, command_line())


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--row", default="crvae", help="MNIST row (experiments/configs/mnist.py)")
  p.add_argument("--scale", default="cpu", choices=("cpu", "paper"))
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=20, help="timed train steps per timing")
  p.add_argument("--eval_images", type=int, default=100, help="test images per eval timing")
  p.add_argument("--jax_variant", default="onednn+fused",
                 help="model.conv_impl of the workers, '+fused' for model.fused_backward "
                      "(compare_torch's --jax_variants); '' = the config's")
  p.add_argument("--write_results", action="store_true",
                 help=f"append the block to {os.path.relpath(compare_torch.RESULTS)}")
  args = p.parse_args()
  if args.rounds < 1 or args.steps < 1 or args.eval_images < 1:
    p.error("--rounds, --steps and --eval_images must be >= 1")
  if args.jax_variant:
    try:
      compare_torch.jax_variant_impl(args.jax_variant)
    except ValueError as e:
      p.error(f"--jax_variant: {e}")
  config = mnist_configs.config_at_scale(args.row, args.scale)  # an unknown row fails
  # What compare_torch's workers read (it sets these per scale).
  args.step, args.conv_impl, args.fused_backward = "mnist", "", False
  args.chunk = config.eval.chunk_size
  args.eval_samples = args.chunk
  block = report(run(args), args)
  print(block)
  if args.write_results:
    write_results(block)
    print(f"appended to {compare_torch.RESULTS}", file=sys.stderr)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
