r"""Where the MNIST crVAE's JAX train step spends its time on this machine (issue 7).

  python -m benchmarks.profile_step --scale=paper --steps=3

Traces --steps train steps (after compilation and 2 warm-up steps) with jax.profiler and
prints the share of each kind of XLA CPU operation: 'ynn_fusion' are the matmuls and
convolutions XLA hands to YNNPACK, the '*_fusion' / copy / concatenate / pad rows are
memory movement and elementwise work. Durations of nested operations (a scan's body
inside its 'while') are counted in both, so shares are approximate.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from crvae_jax import host_memory
from benchmarks.nll_eval import machine_line
from benchmarks.train_throughput import JaxTrainer
from experiments.configs import mnist as mnist_configs


def op_kinds(trace_dir: str) -> collections.Counter:
  """Microseconds per operation kind (the XLA op name without its '.N' suffix)."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  kinds = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or "ThunkExecutor" in name \
        or "Await" in name:
      continue  # Python frames and the executor's own waiting, not XLA operations
    kinds[re.sub(r"\.\d+$", "", name)] += e["dur"]
  return kinds


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", default="paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=15)
  args = p.parse_args()
  trainer = JaxTrainer(mnist_configs.config_at_scale(args.row, args.scale))
  trainer.run(2)
  trace_dir = tempfile.mkdtemp(prefix="crvae_profile_")
  jax.profiler.start_trace(trace_dir)
  trainer.run(args.steps, warmup=0)
  jax.profiler.stop_trace()
  kinds = op_kinds(trace_dir)
  total = sum(kinds.values())
  print(f"# {machine_line()}")
  print(f"# {args.row}, {args.scale} scale, {args.steps} steps; trace in {trace_dir}")
  print("| share | ms/step | operation kind |")
  print("|---|---|---|")
  for name, us in kinds.most_common(args.top):
    print(f"| {us / total:.1%} | {us / 1e3 / args.steps:.1f} | {name} |")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
