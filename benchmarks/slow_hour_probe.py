r"""Why does JAX lose more than PyTorch when this machine is slow? One line per round of
the machine's state next to both frameworks' train step, to correlate over hours
(issue 22).

  python -m benchmarks.slow_hour_probe --scale=paper --rounds=12 --interval_s=240 \
      --jsonl=/tmp/slow_hour_probe.jsonl

Both frameworks live in this one process (built once, then idle while the other runs).
Every round measures, one after the other (the frameworks' order flips each round):
  peak jax / torch  fp32 matmul rate, 4096^2 (jnp.dot / torch.mm), best of 3, GFLOP/s;
  copy, triad       memory bandwidth, numpy float64 on --bw_mib MiB arrays, split over
                    one thread per core (numpy releases the GIL), best of 3, GB/s:
                    copy = np.copyto (16 B per element, STREAM's count), triad = a = b +
                    s*c in two passes (np.multiply, np.add into a; 40 B per element
                    actually moved);
  jax / torch       --steps timed train steps (after one untimed) of the `crvae` model
                    at --scale: benchmarks.train_throughput.JaxTrainer and
                    torch_reference.Trainer (eager), img/s.
Around each train measurement it also records what the OS saw: CPU steal (time the
hypervisor gave this VM's vCPUs to someone else) and the CPU time of other processes
on this VM, both in % of all cores' time (/proc/stat minus this process's own time);
and this process's minor page faults and involuntary context switches per step
(getrusage). The JSON lines (--jsonl) hold every field; the printed table the main ones.
Timings are comparable only within a run and between rounds of similar load; the probe
says nothing by itself: read the correlation across a slow and a fast hour.
"""

import argparse
import json
import os
import resource
import sys
import time
from concurrent import futures

import numpy as np

from crvae_jax import host_memory
from experiments.configs import mnist as mnist_configs


# --------------------------------------------------------------------------- the OS

def _cpu_ticks() -> list:
  """/proc/stat's aggregate cpu line: user nice system idle iowait irq softirq steal."""
  with open("/proc/stat") as f:
    return [int(v) for v in f.readline().split()[1:9]]


class Observed:
  """`with Observed() as o:` -> o.fields: wall s, steal %, others' CPU %, minor faults
  and involuntary context switches of this process over the block."""

  def __enter__(self):
    self._t, self._ticks = time.perf_counter(), _cpu_ticks()
    self._times, self._ru = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self._t
    d = [b - a for a, b in zip(self._ticks, _cpu_ticks())]
    times, ru = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    hz = os.sysconf("SC_CLK_TCK")
    total = max(sum(d), 1)
    busy = total - d[3] - d[4] - d[7]  # not idle, iowait or steal
    own = (times.user - self._times.user + times.system - self._times.system) * hz
    self.fields = {"wall_s": wall, "steal_pct": 100 * d[7] / total,
                   "others_pct": max(0.0, 100 * (busy - own) / total),
                   "minflt": ru.ru_minflt - self._ru.ru_minflt,
                   "nivcsw": ru.ru_nivcsw - self._ru.ru_nivcsw}
    return False


# --------------------------------------------------------------------------- probes

def bandwidth(mib: int, repeats: int = 3) -> dict:
  """numpy copy and triad GB/s over all cores (module doc)."""
  n = mib * 2 ** 20 // 8
  a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)
  threads = os.cpu_count()
  parts = [slice(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

  def copy(s):
    np.copyto(a[s], b[s])

  def triad(s):
    np.multiply(c[s], 3.0, out=a[s])
    np.add(a[s], b[s], out=a[s])

  out = {}
  with futures.ThreadPoolExecutor(threads) as pool:
    for name, fn, nbytes in (("copy", copy, 16), ("triad", triad, 40)):
      list(pool.map(fn, parts))  # touch the pages
      best = float("inf")
      for _ in range(repeats):
        t = time.perf_counter()
        list(pool.map(fn, parts))
        best = min(best, time.perf_counter() - t)
      out[f"{name}_gbs"] = nbytes * n / best / 1e9
  return out


class Frameworks:
  """The JAX and the torch train step of `config`, built (and compiled) once."""

  def __init__(self, config):
    import torch
    from benchmarks import torch_reference as ref
    from benchmarks.train_throughput import JaxTrainer
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    self.jax = JaxTrainer(config)
    self.torch = ref.Trainer(ref.model_from_config(config), config)
    self.batch = config.train.batch_size

  def peaks(self) -> dict:
    from benchmarks import torch_reference as ref
    from benchmarks.nll_eval import matmul_gflops
    return {"peak_jax": matmul_gflops(repeats=3), "peak_torch": ref.matmul_gflops(repeats=3)}

  def step(self, name: str, steps: int) -> dict:
    """img/s of `steps` steps after one untimed one; the OS fields over all of them."""
    trainer = self.jax if name == "jax" else self.torch
    with Observed() as o:
      per_s = trainer.run(steps, warmup=1)
    f = o.fields
    return {f"{name}_img_s": per_s, f"{name}_steal_pct": f["steal_pct"],
            f"{name}_others_pct": f["others_pct"],
            f"{name}_minflt_per_step": f["minflt"] / (steps + 1),
            f"{name}_nivcsw_per_step": f["nivcsw"] / (steps + 1)}


# --------------------------------------------------------------------------- CLI

COLUMNS = [("time", "{}"), ("load1", "{:.1f}"), ("peak_jax", "{:.0f}"),
           ("peak_torch", "{:.0f}"), ("copy_gbs", "{:.1f}"), ("triad_gbs", "{:.1f}"),
           ("jax_img_s", "{:.1f}"), ("torch_img_s", "{:.1f}"), ("ratio", "{:.2f}"),
           ("jax_steal_pct", "{:.0f}"), ("jax_others_pct", "{:.0f}"),
           ("jax_minflt_per_step", "{:.0f}"), ("torch_minflt_per_step", "{:.0f}"),
           ("jax_nivcsw_per_step", "{:.0f}"), ("torch_nivcsw_per_step", "{:.0f}")]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", default="paper", help="cpu or paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--rounds", type=int, default=12)
  p.add_argument("--steps", type=int, default=3, help="timed train steps per framework")
  p.add_argument("--bw_mib", type=int, default=256, help="MiB per bandwidth array (3)")
  p.add_argument("--interval_s", type=float, default=0,
                 help="sleep between rounds (spread the rounds over hours)")
  p.add_argument("--jsonl", default="", help="append every round's fields here")
  args = p.parse_args()
  from benchmarks.nll_eval import machine_line
  from benchmarks.torch_reference import runtime_line
  config = mnist_configs.config_at_scale(args.row, args.scale)
  t = time.perf_counter()
  fw = Frameworks(config)
  print(f"# {machine_line()} | {runtime_line()}")
  print(f"# command: python -m benchmarks.slow_hour_probe {' '.join(sys.argv[1:])}")
  print(f"# set-up (both frameworks, first steps) {time.perf_counter() - t:.0f} s; "
        f"{args.scale} scale, batch {fw.batch}; ratio = jax / torch img/s")
  print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
  print("|---" * len(COLUMNS) + "|", flush=True)
  for r in range(args.rounds):
    if r and args.interval_s:
      time.sleep(args.interval_s)
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "load1": os.getloadavg()[0], "scale": args.scale, "steps": args.steps}
    row.update(fw.peaks())
    row.update(bandwidth(args.bw_mib))
    for name in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
      row.update(fw.step(name, args.steps))
    row["ratio"] = row["jax_img_s"] / row["torch_img_s"]
    print("| " + " | ".join(fmt.format(row[name]) for name, fmt in COLUMNS) + " |",
          flush=True)
    if args.jsonl:
      with open(args.jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
