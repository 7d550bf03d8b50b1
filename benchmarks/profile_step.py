r"""Where a JAX train step or IS evaluation spends its time on this machine (issues 7,
19 and 22).

  python -m benchmarks.profile_step --scale=paper --steps=3
  python -m benchmarks.profile_step --scale=cpu --measure=eval --eval_k=1000
  python -m benchmarks.profile_step \
      --config=experiments/configs/rgb.py:emoji_crvaegan,cpu --steps=3

Without --config: the MNIST crVAE step of --row at --scale. With --config: the Stage1
(experiments/configs/rgb.py:ROW[,cpu]) or Stage2 (experiments/configs/stage2.py:...)
GAN step on random images (`benchmarks.ab_gan_step.GanTrainer`; --width and --batch
override the config). --measure=eval traces instead one pass of the MNIST IS-NLL
estimator (`benchmarks.nll_eval.eval_runner`) over one eval batch of random binary images
at K=--eval_k with the config's chunk (or --eval_chunk); ms are then per pass.

Traces --steps train steps (after compilation and 2 warm-up steps) with jax.profiler and
prints the share of each kind of XLA CPU operation: 'ynn_fusion' are the matmuls and
convolutions XLA hands to YNNPACK, the '*_fusion' / copy / concatenate / pad rows are
memory movement and elementwise work. Durations of nested operations (a scan's body
inside its 'while') are counted in both, so shares are approximate. A last line says
how the operations share XLA's threads: the busy time of each, and how much of the FFI
calls' time (the oneDNN convolutions under conv_impl 'onednn', which run on their own
OpenMP threads) another XLA operation ran beside them (`concurrency`).
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
from crvae_jax.models import layers
from benchmarks.ab_gan_step import GanTrainer, apply_overrides, load_config
from benchmarks.nll_eval import eval_runner, machine_line, random_variables
from benchmarks.train_throughput import JaxTrainer
from experiments.configs import mnist as mnist_configs


_CONTAINERS = ("while", "call", "conditional", "cond")  # their bodies are traced too


def trace_events(trace_dir: str) -> list:
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    return json.load(f)["traceEvents"]


def is_operation(event: dict) -> bool:
  """Whether a trace event is one XLA operation's run (not a Python frame or the
  executor's own work)."""
  name = event.get("name", "")
  return not (event.get("ph") != "X" or name.startswith("$") or "ThunkExecutor" in name
              or "Await" in name or "PjRt" in name or "PjitFunction" in name
              or name.startswith(("ThreadpoolListener", "Wait for", "end: ")))


def op_times(events: list) -> collections.Counter:
  """Microseconds per XLA operation (its HLO instruction name, e.g. 'convolution.5') in
  the trace `events` (trace_events)."""
  times = collections.Counter()
  for e in events:
    if is_operation(e):
      times[e["name"]] += e["dur"]
  return times


def op_kind(name: str) -> str:
  """An XLA operation's kind: its name without the '.N' suffix ('ffi_call.40' -> 'ffi_call')."""
  return re.sub(r"\.\d+$", "", name)


def _union(intervals: list) -> list:
  """Sorted, disjoint (start, end) covering the same time as `intervals`."""
  out = []
  for a, b in sorted(intervals):
    if out and a <= out[-1][1]:
      out[-1] = (out[-1][0], max(out[-1][1], b))
    else:
      out.append((a, b))
  return out


def concurrency(events: list, kind: str = "ffi_call") -> dict:
  """How XLA's operations share the threads that run them (the 'tf_XLAEigen' pool):
  span = first start to last end of an operation (us, gaps included); busy = us each
  thread runs an operation; `kind` = us in operations of that kind (default: the FFI
  calls, i.e. the oneDNN convolutions under conv_impl 'onednn', which run their own
  OpenMP threads), and `kind`_beside = us of it during which at least one other pool
  thread runs an operation, `kind`_beside_same = us of it during which another thread
  runs an operation of the same kind (two oneDNN calls at once, each with its OpenMP
  team, oversubscribe the cores); covered = the share of all operation time (any
  thread) the pool's threads ran. Only leaf operations count (is_operation, and not a
  container such as a scan's 'while', whose body is traced too)."""
  names = {(e.get("pid"), e["tid"]): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  runs = collections.defaultdict(list)  # (pid, tid) -> [(start, end, kind)]
  total = 0.0
  for e in events:
    op = op_kind(e.get("name", ""))
    if not is_operation(e) or op in _CONTAINERS:
      continue
    total += e["dur"]
    thread = (e.get("pid"), e.get("tid"))
    if "XLAEigen" in names.get(thread, ""):
      runs[thread].append((e["ts"], e["ts"] + e["dur"], op))
  if not runs:
    return {}
  spans = [x for v in runs.values() for x in v]
  busy = sorted((sum(b - a for a, b, _ in v) for v in runs.values()), reverse=True)
  out = {"span": max(b for _, b, _ in spans) - min(a for a, _, _ in spans),
         "busy": busy, "covered": sum(busy) / total, kind: 0.0, kind + "_beside": 0.0,
         kind + "_beside_same": 0.0}
  overlap = lambda a0, a1, intervals: sum(max(0.0, min(a1, b1) - max(a0, b0))
                                          for b0, b1 in intervals)
  for thread, mine in runs.items():
    others = _union([(a, b) for t, v in runs.items() if t != thread for a, b, _ in v])
    same = _union([(a, b) for t, v in runs.items() if t != thread for a, b, k in v
                   if k == kind])
    for a0, a1, k in mine:
      if k == kind:
        out[kind] += a1 - a0
        out[kind + "_beside"] += overlap(a0, a1, others)
        out[kind + "_beside_same"] += overlap(a0, a1, same)
  return out


def op_kinds(events: list) -> collections.Counter:
  """Microseconds per operation kind (the XLA op name without its '.N' suffix)."""
  kinds = collections.Counter()
  for name, us in op_times(events).items():
    kinds[op_kind(name)] += us
  return kinds


def op_scopes(hlo_text: str) -> dict:
  """HLO instruction name -> the model scope it comes from: the `op_name` of its own
  metadata or, for fusions without one, of the first instruction of the computation it
  calls; 'bwd ' marks the backward pass (a transpose(jvp(...)) scope)."""
  first_meta, current, scopes, calls = {}, None, {}, {}
  op_name = re.compile(r'op_name="([^"]*)"')
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.-]+) .*\{$", line)
    if head:
      current = head.group(1)
      continue
    inst = re.match(r"^\s*(?:ROOT )?%?([\w.-]+) = ", line)
    if not inst:
      continue
    meta = op_name.search(line)
    if meta and current not in first_meta:
      first_meta[current] = meta.group(1)
    called = re.search(r"calls=%?([\w.-]+)", line)
    scopes[inst.group(1)] = meta.group(1) if meta else None
    if called:
      calls[inst.group(1)] = called.group(1)
  out = {}
  for name, scope in scopes.items():
    scope = scope or first_meta.get(calls.get(name), "")
    out[name] = _short_scope(scope)
  return out


def _short_scope(op_name: str) -> str:
  """'jit(_per_device)/transpose(jvp(RgbVAE))/RgbVAE.decode_code/decoder/Conv_2/pad' ->
  'bwd RgbVAE.decode_code/decoder/Conv_2'."""
  if not op_name:
    return "(no scope)"
  backward = "transpose(" in op_name
  parts = [p for p in op_name.split("/")[1:] if not p.startswith(("jvp(", "transpose(",
                                                                   "jit(", "vmap("))]
  layers = [p for p in parts[:-1] if not p.startswith(("while", "body", "cond", "checkpoint",
                                                        "remat"))]
  scope = "/".join(layers) or (parts[-1] if parts else op_name)
  return ("bwd " if backward else "fwd ") + scope


def scope_times(times: collections.Counter, scopes: dict, depth: int) -> collections.Counter:
  """Microseconds per scope, cut to its first `depth` path components; containers
  (while, call) are left out because their bodies' operations are counted."""
  out = collections.Counter()
  for name, us in times.items():
    kind = op_kind(name)
    if kind in _CONTAINERS:
      continue
    scope = scopes.get(name, "(not in the entry module)")
    if depth == 0:  # each operation on its own
      out[f"{name}: {scope}"] += us
      continue
    head, _, path = scope.partition(" ")
    out[f"{head} {'/'.join(path.split('/')[:depth])}" if path else f"{scope} {kind}"] += us
  return out


def compiled_text(trainer) -> str:
  """The HLO of the trainer's compiled step."""
  if isinstance(trainer, EvalPass):
    return trainer.timed.hlo_text()
  if isinstance(trainer, GanTrainer):
    return trainer.hlo_text()
  return trainer.step_fn.lower(trainer.state, trainer.batches[0],
                               trainer.key).compile().as_text()


class EvalPass:
  """One pass of the IS-NLL estimator over one eval batch, with the `run` of a trainer."""

  def __init__(self, config, num_samples: int, chunk_size: int):
    self.config = config
    model, variables = random_variables(config)
    self.timed = eval_runner(config, model, variables, config.eval.batch_size,
                             num_samples, chunk_size)

  def run(self, steps: int, warmup: int = 0):
    del warmup  # eval_runner has compiled and run the estimator once
    for _ in range(steps):
      self.timed()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scale", default="paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--config", default="", help="a GAN config (Stage1 or Stage2)")
  p.add_argument("--width", type=int, default=0)
  p.add_argument("--batch", type=int, default=0)
  p.add_argument("--measure", default="train", choices=("train", "eval"),
                 help="MNIST only: a train step or one IS evaluation pass")
  p.add_argument("--eval_k", type=int, default=1000, help="--measure=eval: K per image")
  p.add_argument("--eval_chunk", type=int, default=0,
                 help="--measure=eval: samples per chunk (0: the config's)")
  p.add_argument("--conv_impl", default="", choices=("",) + layers.CONV_IMPLS,
                 help="override model.conv_impl (empty: the config's)")
  p.add_argument("--fused_backward", action="store_true",
                 help="set model.fused_backward (the hand-written LSTM/BatchNorm backward)")
  p.add_argument("--by", default="kind", choices=("kind", "scope"),
                 help="group by XLA operation kind or by model scope (fwd/bwd)")
  p.add_argument("--depth", type=int, default=2, help="--by=scope: path components kept "
                 "(0: list single operations with their scopes)")
  args = p.parse_args()
  config = (apply_overrides(load_config(args.config), args) if args.config else
            mnist_configs.config_at_scale(args.row, args.scale))
  if args.conv_impl:
    config.model.conv_impl = args.conv_impl
  config.model.fused_backward = args.fused_backward  # (the configs' default is on)
  if args.config:
    trainer = GanTrainer(config)
    what = f"{args.config} (width {trainer.config.model.width}, batch " \
           f"{trainer.config.train.batch_size})"
  elif args.measure == "eval":
    chunk = args.eval_chunk or config.eval.chunk_size
    trainer = EvalPass(config, args.eval_k, chunk)
    what = (f"{args.row}, {args.scale} scale, IS eval K={args.eval_k}, chunk {chunk} x "
            f"batch {config.eval.batch_size}; ms per pass")
  else:
    trainer = JaxTrainer(config)
    what = f"{args.row}, {args.scale} scale"
  trainer.run(2)
  trace_dir = tempfile.mkdtemp(prefix="crvae_profile_")
  jax.profiler.start_trace(trace_dir)
  trainer.run(args.steps, warmup=0)
  jax.profiler.stop_trace()
  events = trace_events(trace_dir)
  if args.by == "kind":
    kinds = op_kinds(events)
  else:
    scopes = op_scopes(compiled_text(trainer))
    kinds = scope_times(op_times(events), scopes, args.depth)
  total = sum(kinds.values())
  print(f"# {machine_line()}")
  print(f"# {what}, {args.steps} steps; conv_impl {trainer.config.model.conv_impl!r}; "
        f"trace in {trace_dir}")
  print(f"| share | ms/step | operation {args.by} |")
  print("|---|---|---|")
  for name, us in kinds.most_common(args.top):
    print(f"| {us / total:.1%} | {us / 1e3 / args.steps:.1f} | {name} |")
  c = concurrency(events)
  if c:
    per_step = lambda us: f"{us / 1e3 / args.steps:.0f}"
    print(f"\nThreads: from the first to the last operation of XLA's pool "
          f"{per_step(c['span'])} ms/step, its threads busy "
          f"{' + '.join(per_step(b) for b in c['busy'])} ms/step ({c['covered']:.0%} "
          f"of all operation time)"
          + (f"; FFI calls (oneDNN convs) {per_step(c['ffi_call'])} ms/step, "
             f"{c['ffi_call_beside'] / c['ffi_call']:.0%} of it with another XLA "
             f"operation running beside ({c['ffi_call_beside_same'] / c['ffi_call']:.0%} "
             f"beside another FFI call)" if c["ffi_call"] else ""))


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
