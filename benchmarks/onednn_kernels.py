r"""Which oneDNN kernels each framework's train step runs, and how long each takes (issue 22).

  pip install -r requirements-torch.txt
  python -m benchmarks.onednn_kernels                   # paper-scale crVAE, 3 steps each
  python -m benchmarks.onednn_kernels --scale=cpu --top=20

Both frameworks compute their convolutions with oneDNN: crvae_jax through its FFI kernels
(conv_impl 'onednn', with the fused backward: the shipped default where oneDNN builds),
PyTorch (benchmarks/torch_reference.py, eager) through its bundled oneDNN, which also runs
its nn.LSTM. A newer oneDNN could only help the JAX step if the two picked different
kernels, or the same kernels at different speeds, for the same convolutions: this script
shows which (`benchmarks/layers_vs_torch.py` times the same layers in isolation). Each
framework runs in its own process with ONEDNN_VERBOSE=1; after the trainer's first
(compiling) step and --warmup more, the worker flushes C's stdout and writes a marker,
and the `exec` lines of the next --steps steps are summed per primitive kind, and per
(kind, implementation, propagation, shape). The JAX process holds two
oneDNN libraries, told apart by their verbose format: the FFI's (the onednn-cpu-gomp
wheel) and XLA's own, inside jaxlib, which runs XLA's dots that YNNPACK does not take
('gemm_api' rows).

oneDNN times every primitive on its own and prints a line per call, so these are the
kernels' times under verbose, not a step's time (benchmarks/compare_torch.py measures
that); run it on an otherwise idle machine. Transposed convolutions are 'deconvolution'
primitives in PyTorch and convolutions with swapped channels in crvae_jax (the same
arithmetic), so the side-by-side table does not match them; the per-kind totals hold
them.
"""

import argparse
import collections
import ctypes
import os
import subprocess
import sys
from typing import NamedTuple

from crvae_jax import host_memory
from crvae_jax.models import layers

MARK = "=== onednn_kernels: timed steps ==="
FRAMEWORKS = ("jax", "torch")


class Call(NamedTuple):
  library: str  # the oneDNN version that printed it
  kind: str  # convolution, deconvolution, rnn, reorder, gemm_api, ...
  impl: str  # e.g. brg_conv_fwd:avx512_core
  prop: str  # forward_training, backward_data, backward_weights, undef
  shape: str  # oneDNN's problem descriptor, e.g. mb128_ic64oc64_ih30oh30kh3...
  ms: float


def parse_verbose(lines) -> list:
  """The `exec` calls among oneDNN verbose lines (v3.2's format and the 'v1' format of
  later versions; each library's version from its own 'info' line)."""
  versions, calls = {}, []
  for line in lines:
    if not line.startswith("onednn_verbose,"):
      continue
    fields = line.rstrip("\n").split(",")
    fmt = "v1" if fields[1] == "v1" else ""
    if "info" in fields[1:3] and "oneDNN v" in line:
      versions[fmt] = line.split("oneDNN ", 1)[1].split(" ", 1)[0]
      continue
    if "exec" not in fields[1:4]:
      continue
    k = fields.index("exec")
    try:
      ms = float(fields[-1])
    except ValueError:
      continue
    calls.append(Call(versions.get(fmt, fmt or "?"), fields[k + 2], fields[k + 3],
                      fields[k + 4], fields[-2], ms))
  return calls


def summarise(calls, steps: int):
  """({(library, kind): ms per step}, {(library, kind, impl, prop, shape): (calls per
  step, ms per step)})."""
  by_kind = collections.defaultdict(float)
  by_call = collections.defaultdict(lambda: [0, 0.0])
  for c in calls:
    by_kind[(c.library, c.kind)] += c.ms / steps
    row = by_call[(c.library, c.kind, c.impl, c.prop, c.shape)]
    row[0] += 1
    row[1] += c.ms / steps
  return dict(by_kind), {k: (n / steps, ms) for k, (n, ms) in by_call.items()}


def _worker(framework: str, scale: str, warmup: int, steps: int):
  """(In a worker process, ONEDNN_VERBOSE=1.) Warm-up steps, the marker, timed steps."""
  from benchmarks.compare_torch import config_at_scale  # pylint: disable=g-import-not-at-top
  config = config_at_scale("mnist", "crvae", scale)
  if framework == "jax":
    from benchmarks.train_throughput import JaxTrainer  # pylint: disable=g-import-not-at-top
    config.model.conv_impl = "onednn"
    config.model.fused_backward = True
    trainer = JaxTrainer(config)  # runs (and compiles) the first step
  else:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    trainer = ref.Trainer(ref.model_from_config(config), config, "eager")  # (so does this)
  if warmup:
    trainer.run(warmup, warmup=0)
  libc = ctypes.CDLL(None)
  libc.fflush(None)  # oneDNN prints with C's buffered stdout: flush it before the marker
  sys.stdout.flush()
  os.write(1, (MARK + "\n").encode())
  trainer.run(steps, warmup=0)
  libc.fflush(None)


def run_worker(framework: str, args) -> list:
  # Each framework's allocator as benchmarks/compare_torch.py gives it: JAX this process's
  # (the entry points' jemalloc, crvae_jax/host_memory.py), PyTorch the system's malloc.
  env = os.environ if framework == "jax" else host_memory.without_hugepages(os.environ)
  env = {k: v for k, v in env.items() if not k.endswith("_VERBOSE_TIMESTAMP")}  # a time
  env.update(ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")  # column would shift the parsed fields
  cmd = [sys.executable, "-m", "benchmarks.onednn_kernels", f"--worker={framework}",
         f"--scale={args.scale}", f"--warmup={args.warmup}", f"--steps={args.steps}"]
  out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, check=False)
  if out.returncode:
    raise SystemExit(f"the {framework} worker failed (exit {out.returncode}):\n"
                     f"{out.stderr[-3000:]}")
  lines = out.stdout.splitlines()
  if MARK not in lines:
    raise SystemExit(f"the {framework} worker wrote no marker line; its stderr ends:\n"
                     f"{out.stderr[-3000:]}")
  # info lines come at a library's first use (the warm-up): keep them, drop warm-up calls
  cut = lines.index(MARK)
  return [l for l in lines[:cut] if ",info," in l] + lines[cut + 1:]


def report(results: dict, steps: int, top: int) -> str:
  out = ["| framework | oneDNN | primitive kind | ms per step |", "|---|---|---|---|"]
  tables = {}
  for framework, lines in results.items():
    by_kind, by_call = summarise(parse_verbose(lines), steps)
    tables[framework] = by_call
    for (library, kind), ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
      out.append(f"| {framework} | {library} | {kind} | {ms:.1f} |")
    out.append(f"| {framework} | all | all | **{sum(by_kind.values()):.1f}** |")
  if set(tables) == set(FRAMEWORKS):
    out += ["", "The same primitive, propagation and shape in both (transposed "
            "convolutions are not matched: PyTorch's are 'deconvolution' calls, crvae_jax's "
            "convolutions with swapped channels):", "",
            "| kind | propagation | shape | jax implementation | jax ms | torch "
            "implementation | torch ms |", "|---|---|---|---|---|---|---|"]
    keyed = {}
    for f in FRAMEWORKS:
      keyed[f] = {}
      for (_, kind, impl, prop, shape), (_, ms) in tables[f].items():
        impls, total = keyed[f].get((kind, prop, shape), ((), 0.0))
        keyed[f][(kind, prop, shape)] = (impls + (impl,) * (impl not in impls), total + ms)
    keyed = {f: {k: ("; ".join(impls), ms) for k, (impls, ms) in by_key.items()}
             for f, by_key in keyed.items()}
    shared = sorted(set(keyed["jax"]) & set(keyed["torch"]),
                    key=lambda k: -keyed["jax"][k][1])
    for key in shared:
      (ji, jms), (ti, tms) = keyed["jax"][key], keyed["torch"][key]
      out.append(f"| {' | '.join(key)} | {ji} | {jms:.1f} | {ti} | {tms:.1f} |")
    out.append(f"| all shared | | | | {sum(keyed['jax'][k][1] for k in shared):.1f} | | "
               f"{sum(keyed['torch'][k][1] for k in shared):.1f} |")
  for framework, by_call in tables.items():
    out += ["", f"{framework}: the {top} slowest (kind, implementation, propagation, shape)",
            "", "| ms per step | calls per step | oneDNN | kind | implementation | "
            "propagation | shape |", "|---|---|---|---|---|---|---|"]
    for (library, kind, impl, prop, shape), (n, ms) in sorted(
        by_call.items(), key=lambda kv: -kv[1][1])[:top]:
      out.append(f"| {ms:.1f} | {n:g} | {library} | {kind} | {impl} | {prop} | {shape} |")
  return "\n".join(out)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", default="paper", choices=("paper", "cpu"))
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the one each "
                 "trainer runs when built (which compiles)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=15, help="rows per framework")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    _worker(args.worker, args.scale, args.warmup, args.steps)
    return
  frameworks = [f for f in args.frameworks.split(",") if f]
  unknown = set(frameworks) - set(FRAMEWORKS)
  if unknown or not frameworks:
    p.error(f"--frameworks: choose from {FRAMEWORKS}, got {args.frameworks!r}")
  if args.warmup < 0 or args.steps < 1:
    p.error(f"--warmup must be >= 0 and --steps >= 1, got {args.warmup} and {args.steps}")
  if "torch" in frameworks:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      p.error(f"the torch worker needs PyTorch (pip install -r requirements-torch.txt): {e}")
  from benchmarks.nll_eval import machine_line  # pylint: disable=g-import-not-at-top
  results = {f: run_worker(f, args) for f in frameworks}
  torch_malloc = host_memory.description(host_memory.without_hugepages(os.environ))
  print(f"# {machine_line()} (the JAX worker's; PyTorch's: {torch_malloc})")
  print(f"# command: python -m benchmarks.onednn_kernels {' '.join(sys.argv[1:])}")
  print(f"# crvae, {args.scale} scale; jax: {layers.kernels_label('onednn', True)}; torch "
        f"eager; {args.steps} steps after {args.warmup + 1} untimed, ONEDNN_VERBOSE=1")
  print(report(results, args.steps, args.top))


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
