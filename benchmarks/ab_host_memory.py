r"""A/B of glibc's transparent-huge-page tunable (crvae_jax/host_memory.py) for both
frameworks, same model, same CPU (issue 7).

  python -m benchmarks.ab_host_memory --scales=cpu,paper --frameworks=jax,torch --rounds=4

Per scale and framework, two `compare_torch.py` worker processes are started, one with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 ('on') and one without it ('off'); the script then
times them alternately (the order flips every round) and prints the median train img/s
and eval samples/s of each and the gain on/off, plus each worker's start-up (process
start to the end of its first train step; the 'off' worker starts first, one sample
each). Figures compare only within one run.
"""

import argparse
import os
import statistics
import sys

# pylint: disable=g-import-not-at-top
from benchmarks.compare_torch import EVAL_IMAGES, Worker
from crvae_jax import host_memory
from experiments.configs import mnist as mnist_configs


def environments() -> dict:
  """{'off': env without the tunable (and told not to re-exec), 'on': env with it}."""
  off = host_memory.without_hugepages(os.environ)
  return {"off": off, "on": host_memory.with_hugepages(off)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--measures", default="train,eval")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=10, help="timed train steps per round")
  args = p.parse_args()
  rows, header = [], None
  for scale in args.scales.split(","):
    chunk = mnist_configs.config_at_scale("crvae", scale).eval.chunk_size
    wargs = argparse.Namespace(row="crvae", steps=args.steps, chunk=chunk,
                                eval_samples=chunk, eval_images=EVAL_IMAGES[scale],
                                conv_impl="")
    for framework in args.frameworks.split(","):
      workers = {name: Worker(framework, scale, wargs, env=env)
                 for name, env in environments().items()}
      if framework == "jax":
        header = workers["off"].ask("info")["runtime"].replace("THP off", "THP off/on")
      start = f"{workers['off'].startup_s:.1f} / {workers['on'].startup_s:.1f}"
      for measure in args.measures.split(","):
        runs = {name: [] for name in workers}
        for r in range(args.rounds):
          for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            runs[name].append(workers[name].ask(measure))
            print(f"  [{scale} {framework} {measure} round {r + 1}] {name:3s} "
                  f"{runs[name][-1]:.1f}", file=sys.stderr, flush=True)
        med = {name: statistics.median(v) for name, v in runs.items()}
        rows.append(f"| {scale} | {framework} | {start} | {measure} | {med['off']:.1f} | "
                    f"{med['on']:.1f} | **{med['on'] / med['off']:.2f}x** | "
                    + " / ".join(f"{v:.0f}" for v in runs["off"]) + " | "
                    + " / ".join(f"{v:.0f}" for v in runs["on"]) + " |")
      for w in workers.values():
        w.close()
  print(f"# {header or 'torch workers only'}")
  print(f"# command: python -m benchmarks.ab_host_memory --scales={args.scales} "
        f"--frameworks={args.frameworks} --measures={args.measures} "
        f"--rounds={args.rounds} --steps={args.steps}")
  print("| scale | framework | start-up s off / on | measure (train img/s, eval samples/s) "
        "| THP off | THP on | on / off | rounds off | rounds on |")
  print("|---" * 9 + "|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()  # no re-exec: the workers get their environments explicitly
