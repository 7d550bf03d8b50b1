r"""JAX vs the best PyTorch on the same model and the same CPU, in one run.

  pip install -r requirements-torch.txt  # PyTorch 2.13 CPU (not a crvae_jax dependency)
  python -m benchmarks.compare_torch --scales=cpu,paper --rounds=5 --torch_variants=eager,compile
  python -m benchmarks.compare_torch --step=gan --scales=cpu,paper --rounds=5

--step chooses the model: 'mnist' (default; --row an MNIST row the PyTorch port has:
crvae (default), crvae_t4, crvae_t16, or cvae, the same network without its LSTMs;
training and IS-NLL evaluation) or 'gan' (the Stage1 train step; --row crvaegan (default) or
vaegan; scale cpu = experiments/configs/rgb.py:emoji_ROW,cpu, paper = rgb.py:celeba_ROW,
benchmarks/gan_throughput.py; training only: the GAN has no likelihood evaluation).

Per scale, one worker process per framework variant is started, one after the other,
each finishing its set-up before the next starts (so no start-up runs alongside another
worker's), each building the model of that scale:
  jax            crvae_jax's data-parallel train step and IS-NLL estimator
                 (benchmarks/train_throughput.py, nll_eval.py; GAN: the Stage1 step,
                 benchmarks/gan_throughput.py), conv_impl from the config ('fastest':
                 oneDNN's where they build), fused_backward off unless asked for;
  torch          benchmarks/torch_reference.py (GAN: torch_gan_reference.py), eager:
                 nn.LSTM, fused Adam, channels_last, inference_mode for evaluation;
  torch-compile, torch-compile-autotune
                 the same under torch.compile (modes default and
                 max-autotune-no-cudagraphs; `--torch_variants`).
The JAX workers inherit this process's environment, so run with the allocator setting
our entry points give them (crvae_jax/host_memory.py: jemalloc where found, else glibc's
transparent-huge-page tunable); the torch workers run with glibc's
malloc as the system has it (as people run PyTorch; --torch_malloc=same gives them the
JAX workers' setting). Each runtime line says which malloc ran;
benchmarks/ab_host_memory.py measures what each setting does to each framework.
The controller then alternates them, the others idle while one is timed: every round
times each worker's training in turn, then each one's evaluation in the reverse order,
then each one's fp32 matmul peak (4096^2, best of 5); the order flips every round. Each
figure is the median over the rounds (>= 5 for a claim).

Columns: start-up = seconds from starting the worker process to the end of its first
training step (imports, init, compilation: torch.compile's compile time is here), +
the evaluator's set-up (JAX's compile; torch's first batch, with its compilation);
train img/s at global batch 128 (one latent sample, Adam; GAN: real images per second
at train.batch_size, generator + discriminator updates, the fraction of steps whose
discriminator update the gate skipped in its own column); eval = decoder samples/s of
the IS-NLL estimator on the same images, K, chunk and batch (--eval_samples defaults to
the chunk so a whole chunk is decoded); ratio = JAX / the best torch variant's median
(> 1: JAX faster), training and evaluation each against their own best; "of peak" =
FLOP rate / JAX's matmul peak, with FLOPs counted from the traced plain formulation
(benchmarks/flops.py: scans counted T times; train = forward + backward of the
objective, GAN: forward + both backward passes, gan_throughput.train_flops_per_image;
eval = decoder per sample + encoder / K). Below the table, one line per
ratio repeats it next to the machine line and the matmul peaks of that scale's run, and
one line gives the kernel's counters during each worker's timings (/proc/vmstat,
system-wide, medians: page faults, direct compaction stalls, huge-page faults,
allocation stalls), which show what a worker's memory use costs the kernel, and one the
CPU time each worker burned while another was timed (should be ~0: a worker whose
threads spin while idle slows the one being timed and biases every ratio).
--write_results appends the whole block, with command, date and commit, to
benchmarks/RESULTS.md (every run, never replacing an earlier one).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from crvae_jax import host_memory
from experiments.configs import mnist as mnist_configs
from experiments.provenance import REPO

STEPS = ("mnist", "gan")
DEFAULT_ROWS = {"mnist": "crvae", "gan": "crvaegan"}
# What each step's workers time, per round (the matmul peak last).
MEASURES = {"mnist": ("train", "eval", "peak"), "gan": ("train", "peak")}
EVAL_IMAGES = {"cpu": 200, "paper": 32}
RESULTS = os.path.join(REPO, "benchmarks", "RESULTS.md")
RESULTS_SECTION = ("## JAX vs the best PyTorch, every run "
                   "(python -m benchmarks.compare_torch --write_results; issue 22)")
RESULTS_MARKER = "<!-- compare_torch --write_results appends its runs above this line -->"


def config_at_scale(step: str, row: str, scale: str):
  """The config that --step/--row/--scales time at `scale`, with model.fused_backward
  off (a JAX variant's '+fused' or --fused_backward turns it on; the labels say which)."""
  if step == "gan":
    from benchmarks import gan_throughput  # imports jax; starts no backend
    config = gan_throughput.config_at_scale(row, scale)
  else:
    config = mnist_configs.config_at_scale(row, scale)
  config.model.fused_backward = False
  return config


def torch_variant(worker: str) -> str:
  """Worker name -> torch_reference variant: 'torch' is eager, 'torch-X' is X."""
  return "eager" if worker == "torch" else worker[len("torch-"):]


def worker_name(variant: str) -> str:
  return "torch" if variant == "eager" else f"torch-{variant}"


# --------------------------------------------------------------------------- workers

def _jax_worker(config, args):
  import jax
  from benchmarks.nll_eval import eval_runner, flops_per_sample, machine_line, matmul_gflops
  from benchmarks.paper_cost import train_flops_per_image
  from benchmarks.train_throughput import JaxTrainer
  trainer = JaxTrainer(config)
  yield {"ready": True}
  # A copy: training donates (deletes) the trainer's buffers.
  variables = jax.tree.map(jax.numpy.copy, trainer.variables())
  timed_eval = eval_runner(config, trainer.model, variables, args.eval_images,
                           args.eval_samples, chunk_size=args.chunk)
  handlers = {
      "train": lambda: trainer.run(args.steps, warmup=1),
      "eval": timed_eval,
      "peak": matmul_gflops,
      "info": lambda: {
          "runtime": machine_line(), "conv_impl": kernels_label(config),
          "params": sum(x.size for x in jax.tree.leaves(trainer.variables()["params"])),
          "train_flops": train_flops_per_image(config),
          "eval_flops": flops_per_sample(config, args.eval_samples)},
  }
  while True:
    yield handlers[(yield)]()


def _torch_worker(config, args, variant: str):
  import torch
  from benchmarks import torch_reference as ref
  ref.fresh_compile_cache()  # start-up includes a first-time compilation, as JAX's
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = ref.model_from_config(config)
  trainer = ref.Trainer(model, config, variant)
  yield {"ready": True}
  evaluator = ref.Evaluator(model, variant)
  evaluator.prepare(config.eval.batch_size, args.eval_samples, args.chunk)
  handlers = {
      "train": lambda: trainer.run(args.steps),
      "eval": lambda: evaluator.samples_per_s(args.eval_images, args.eval_samples,
                                              args.chunk, config.eval.batch_size),
      "peak": ref.matmul_gflops,
      "info": lambda: {"runtime": ref.runtime_line(variant),
                       "params": ref.num_params(model)}}
  while True:
    yield handlers[(yield)]()


def _jax_gan_worker(config, args):
  from benchmarks import gan_throughput
  from benchmarks.nll_eval import machine_line, matmul_gflops
  trainer = gan_throughput.JaxGanTrainer(config)
  yield {"ready": True}
  handlers = {
      "train": lambda: trainer.run(args.steps, warmup=1),
      "peak": matmul_gflops,
      "info": lambda: {
          "runtime": machine_line(), "conv_impl": kernels_label(config),
          "params": trainer.param_counts()["all"], "param_counts": trainer.param_counts(),
          "train_flops": gan_throughput.train_flops_per_image(config),
          "gated": statistics.mean(trainer.gated)}}
  while True:
    yield handlers[(yield)]()


def _torch_gan_worker(config, args, variant: str):
  import torch
  from benchmarks import torch_gan_reference as gan_ref
  from benchmarks import torch_reference as ref
  ref.fresh_compile_cache()  # start-up includes a first-time compilation, as JAX's
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = gan_ref.model_from_config(config)
  trainer = gan_ref.GanTrainer(model, config, variant)
  yield {"ready": True}
  handlers = {
      "train": lambda: trainer.run(args.steps),
      "peak": ref.matmul_gflops,
      "info": lambda: {"runtime": ref.runtime_line(variant),
                       "params": gan_ref.param_counts(model)["all"],
                       "gated": statistics.mean(trainer.gated)}}
  while True:
    yield handlers[(yield)]()


def kernels_label(config) -> str:
  """'onednn + fused backward', or for conv_impl 'fastest' / 'auto' what it picks here:
  'fastest (onednn + fused backward)' (layers.kernels_label)."""
  from crvae_jax.models import layers  # pylint: disable=g-import-not-at-top
  m = config.model
  label = layers.kernels_label(m.conv_impl, m.get("fused_backward", False))
  label = label[len("conv "):]
  return f"{m.conv_impl} ({label})" if m.conv_impl in ("fastest", "auto") else label


def worker_main(args):
  """(In a worker process.) Reads one command per stdin line, answers one JSON line."""
  config = config_at_scale(args.step, args.row, args.scale)
  if args.conv_impl:
    config.model.conv_impl = args.conv_impl
  if args.fused_backward:
    config.model.fused_backward = True
  if args.step == "gan":
    gen = (_jax_gan_worker(config, args) if args.worker == "jax" else
           _torch_gan_worker(config, args, torch_variant(args.worker)))
  elif args.worker == "jax":
    gen = _jax_worker(config, args)
  else:
    gen = _torch_worker(config, args, torch_variant(args.worker))
  print("RESULT " + json.dumps(next(gen)), flush=True)  # ready: the first step is done
  next(gen)  # the rest of the set-up (the evaluator's compilation), to the first command
  print("RESULT " + json.dumps({"setup": True}), flush=True)
  for line in sys.stdin:
    result = gen.send(line.strip())
    print("RESULT " + json.dumps(result), flush=True)
    next(gen)


# --------------------------------------------------------------------------- controller

class Worker:
  """One worker process ('jax', 'torch' = torch eager, 'torch-compile', ...); `env`
  (default: this process's) is its environment, e.g. with or without
  crvae_jax.host_memory's malloc tunable. Returns once its whole set-up is done."""

  def __init__(self, name: str, scale: str, args, env=None, cpus=None):
    """name: 'jax' (model.conv_impl from --conv_impl or the config), 'jax-IMPL' (JAX with
    model.conv_impl IMPL), 'jax-IMPL+fused' (and model.fused_backward) or a torch
    worker's. cpus: the cores it may run on (default: all of this process's); its
    thread pools size themselves to them."""
    framework, conv_impl, fused = name, args.conv_impl, getattr(args, "fused_backward", False)
    if name.startswith("jax-"):
      framework, (conv_impl, fused) = "jax", parse_jax_variant(name[len("jax-"):])
    cmd = [sys.executable, "-m", "benchmarks.compare_torch", f"--worker={framework}",
           f"--step={getattr(args, 'step', 'mnist')}",
           f"--scale={scale}", f"--row={args.row}",
           f"--steps={args.steps}",
           f"--eval_images={args.eval_images}", f"--eval_samples={args.eval_samples}",
           f"--chunk={args.chunk}", f"--conv_impl={conv_impl}"]
    cmd += ["--fused_backward"] if fused else []
    self.name = name
    t = time.perf_counter()
    own = None
    if cpus is not None:  # (Linux) the child inherits the starting thread's cores
      own = os.sched_getaffinity(0)
      os.sched_setaffinity(0, cpus)
    try:
      self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, env=env, cwd=REPO)
    finally:
      if own is not None:
        os.sched_setaffinity(0, own)
    self._read()
    self.startup_s = time.perf_counter() - t
    # Wait for the rest of its set-up, so that it does not run alongside the next
    # worker's start-up or timings.
    t = time.perf_counter()
    self._read()
    self.setup_s = time.perf_counter() - t

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith("RESULT "):
        return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the {self.name} worker exited (code {self.proc.wait()}); its "
                       "error is printed above")

  def send(self, command: str) -> None:
    """Starts `command` (answered by the next `receive`)."""
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()

  def receive(self):
    return self._read()

  def ask(self, command: str):
    self.send(command)
    return self._read()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()

  def cpu_seconds(self) -> float:
    """CPU time (user + system) of all this worker's threads so far (Linux /proc)."""
    return process_cpu_seconds(self.proc.pid)


def process_cpu_seconds(pid: int, proc: str = "/proc") -> float:
  """User + system CPU seconds of process `pid` so far, its ended threads included
  (/proc/PID/stat; 0.0 once the process is gone)."""
  try:
    with open(f"{proc}/{pid}/stat", "rb") as f:
      fields = f.read().rsplit(b")", 1)[1].split()  # (the name may hold ')' or spaces)
  except OSError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def ask_timed(worker, command: str, others: dict, idle: dict):
  """worker.ask(command), while the idle workers `others` ({name: Worker}) are watched:
  appends to idle[name] the CPU seconds each burned meanwhile (see idle_cpu_line)."""
  cpu = {n: o.cpu_seconds() for n, o in others.items()}
  answer = worker.ask(command)
  for n, o in others.items():
    idle[n].append(o.cpu_seconds() - cpu[n])
  return answer


def idle_cpu_line(idle: dict) -> str:
  """'Idle workers' CPU ...': what each worker burned while others were timed (seconds
  per timing, median and max; a worker's own wind-down after it answered, e.g. OpenMP
  threads spinning before they sleep, lands in the next timing, which it also slows); a
  worker whose threads spin when idle (e.g. OpenMP with OMP_WAIT_POLICY=ACTIVE and no
  throttling) takes a core from the one being timed, and every ratio of that run is
  then biased in its favour."""
  return ("Idle workers' CPU while another was timed (s per timing, median / max; "
          "near 0 = no bias): " + ", ".join(
              f"{n} {statistics.median(v):.2f} / {max(v):.2f}" for n, v in idle.items() if v))


# System-wide kernel counters read around each timing: page faults, direct compaction,
# transparent-huge-page faults and allocation stalls (what a worker's memory costs the
# kernel while it is timed; the other workers are idle then).
VMSTAT_KEYS = ("pgfault", "compact_stall", "thp_fault_alloc", "allocstall_movable")


def vmstat(path: str = "/proc/vmstat") -> dict:
  """VMSTAT_KEYS from /proc/vmstat ({} where it cannot be read)."""
  try:
    with open(path, encoding="utf-8") as f:
      return {k: int(v) for k, v in (line.split()[:2] for line in f if line.strip())
              if k in VMSTAT_KEYS}
  except (OSError, ValueError):
    return {}


def compare(scale: str, args) -> dict:
  """Start the workers (one after the other), alternate their timings."""
  workers = [Worker(name, scale, args) for name in jax_names(args)]
  # PyTorch as people run it: glibc's malloc as the system has it, unless told to share
  # this process's allocator setting (--torch_malloc=same).
  torch_env = (None if args.torch_malloc == "same" else
               host_memory.without_hugepages(os.environ))
  workers += [Worker(worker_name(v), scale, args, env=torch_env)
              for v in args.torch_variants]
  names = [w.name for w in workers]
  measures = MEASURES[args.step]
  runs = {(w, m): [] for w in names for m in measures}
  kernel = {(w, m): [] for w in names for m in measures if m != "peak"}
  idle = {w: [] for w in names}  # CPU seconds each one burned while another was timed
  for r in range(args.rounds):
    order = workers if r % 2 == 0 else workers[::-1]
    for what, ws in (("train", order), ("eval", order[::-1]), ("peak", order)):
      if what not in measures:
        continue
      for w in ws:
        before = vmstat()
        runs[(w.name, what)].append(
            ask_timed(w, what, {o.name: o for o in workers if o is not w}, idle))
        after = vmstat()
        if (w.name, what) in kernel:
          kernel[(w.name, what)].append({k: after[k] - before[k] for k in after
                                         if k in before})
        print(f"  [{scale} round {r + 1}] {w.name:22s} {what:5s} "
              f"{runs[(w.name, what)][-1]:.1f}", file=sys.stderr, flush=True)
  info = {w.name: w.ask("info") for w in workers}
  for w in workers:
    w.close()
  res = {"scale": scale, "names": names, "measures": measures,
         "startup": {w.name: (w.startup_s, w.setup_s) for w in workers},
         "median": {k: statistics.median(v) for k, v in runs.items()},
         "runs": runs, "info": info, "idle_cpu": idle,
         "kernel": {k: {c: statistics.median(d[c] for d in v) for c in v[0]
                        if all(c in d for d in v)}  # (a counter every timing read)
                    for k, v in kernel.items() if v and v[0]}}
  if "eval" in measures:
    batch = mnist_configs.config_at_scale(args.row, scale).eval.batch_size
    res["eval"] = (f"{args.eval_samples}, {min(args.chunk, args.eval_samples)} x {batch}, "
                   f"{args.eval_images} images")
  return res


def parse_jax_variant(variant: str):
  """'onednn' -> ('onednn', False); 'onednn+fused' -> ('onednn', True)."""
  impl, plus, suffix = variant.partition("+")
  if plus and suffix != "fused":
    raise ValueError(f"JAX variant {variant!r}: the only suffix is '+fused' "
                     "(model.fused_backward)")
  return impl, bool(plus)


def check_conv_impl(impl: str) -> str:
  """`impl` if it is a model.conv_impl, else ValueError naming the allowed ones."""
  from crvae_jax.models.layers import CONV_IMPLS  # pylint: disable=g-import-not-at-top
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl {impl!r} is not one of {CONV_IMPLS}")
  return impl


def jax_variant_impl(variant: str) -> str:
  """The checked conv_impl of a JAX variant ('onednn+fused' -> 'onednn')."""
  return check_conv_impl(parse_jax_variant(variant)[0])


def jax_names(args) -> list:
  """The JAX workers: 'jax' (the config's conv_impl, or --conv_impl), or with
  --jax_variants one 'jax-IMPL' per conv_impl listed."""
  return [f"jax-{impl}" for impl in args.jax_variants] if args.jax_variants else ["jax"]


def is_jax(name: str) -> bool:
  return name == "jax" or name.startswith("jax-")


def best_torch(res: dict, what: str) -> str:
  """The torch worker with the highest median `what` ('train' or 'eval')."""
  return max((n for n in res["names"] if not is_jax(n)),
             key=lambda n: res["median"][(n, what)])


def command_line() -> str:
  return "python -m benchmarks.compare_torch " + " ".join(sys.argv[1:])


def report(results) -> str:
  """The result block: header, table, one line per ratio with the machine line. The
  measures are those of the results (MNIST: train and eval; GAN: train, with the
  fraction of gated discriminator updates per worker). With several JAX workers
  (--jax_variants) each gets its own ratio to the best torch variant."""
  names = results[0]["names"]
  jaxes = [n for n in names if is_jax(n)]
  torch_names = [n for n in names if not is_jax(n)]
  jax0 = jaxes[0]  # parameters, FLOPs and the matmul peak are read from the first
  info = results[0]["info"]
  measures = [w for w in results[0].get("measures", MEASURES["mnist"]) if w != "peak"]
  gan = "gated" in info[jax0]
  cols = " / ".join(names)
  jcols = " / ".join(jaxes)
  header = ["scale", "params", "matmul peak GFLOP/s jax / torch",
            f"start-up s + {'set-up' if gan else 'eval set-up'} s {cols}"]
  header += [f"train img/s {cols}", "best torch train", f"train ratio {jcols}",
             f"train of peak {jcols} / best torch"]
  if gan:
    header.append(f"D updates gated {cols}")
  if "eval" in measures:
    header += ["eval K, chunk x batch, images", f"eval samples/s {cols}",
               "best torch eval", f"eval ratio {jcols}",
               f"eval of peak {jcols} / best torch"]
  impls = "" if jaxes == ["jax"] else " | " + ", ".join(
      f"{n}: conv_impl {info[n]['conv_impl']}" for n in jaxes)
  lines = [f"# {info[jax0]['runtime']}{impls} | " + " | ".join(
               f"{n}: {info[n]['runtime']}" for n in torch_names),
           f"# command: {command_line()}",
           "",
           "| " + " | ".join(header) + " |",
           "|---" * len(header) + "|"]
  ratio_lines = []
  for res in results:
    m, inf, s = res["median"], res["info"], res["startup"]
    assert all(inf[n]["params"] == inf[jax0]["params"] for n in names), inf
    peak = m[(jax0, "peak")]
    torch_peak = statistics.median(m[(n, "peak")] for n in torch_names)
    pct = lambda rate, what: f"{rate * inf[jax0][what + '_flops'] / 1e9 / peak:.0%}"
    row = [res["scale"], f"{inf[jax0]['params'] / 1e6:.2f} M",
           f"{peak:.0f} / {torch_peak:.0f}",
           " / ".join(f"{s[n][0]:.1f} + {s[n][1]:.1f}" for n in names)]
    for what, fmt in (("train", "{:.1f}"), ("eval", "{:.0f}")):
      if what not in measures:
        continue
      best = best_torch(res, what)
      ratios = {j: m[(j, what)] / m[(best, what)] for j in jaxes}
      if what == "eval":
        row.append(res["eval"])
      row += [" / ".join(fmt.format(m[(n, what)]) for n in names), best,
              " / ".join(f"**{r:.2f}x**" for r in ratios.values()),
              " / ".join(pct(m[(j, what)], what) for j in jaxes) +
              f" / {pct(m[(best, what)], what)}"]
      if what == "train" and gan:
        row.append(" / ".join(f"{inf[n]['gated']:.0%}" for n in names))
      unit = "img/s" if what == "train" else "samples/s"
      for j, ratio in ratios.items():
        ratio_lines.append(
            f"{res['scale']} {what}: {j} {fmt.format(m[(j, what)])} / {best} "
            f"{fmt.format(m[(best, what)])} {unit} = **{ratio:.2f}x** | matmul peak jax "
            f"{peak:.0f} / torch {torch_peak:.0f} GFLOP/s | {inf[jax0]['runtime']}")
    lines.append("| " + " | ".join(row) + " |")
  rows = sorted({r.get("row", "") for r in results} - {""})
  lines += ["", "Ratios (JAX / best torch variant)" + (f" of row {', '.join(rows)}" if rows
                                                      else "")
            + ", each with its machine line:"]
  lines += [f"- {line}" for line in ratio_lines]
  lines.append("")
  if gan:
    lines.append("FLOPs per train image (counted, plain formulation; forward + both "
                 "backward passes): " + "; ".join(
                     f"{r['scale']} {r['info'][jax0]['train_flops'] / 1e9:.2f} GFLOP"
                     for r in results))
    lines.append("Parameters (JAX = every torch worker's): " + "; ".join(
        f"{r['scale']} " + ", ".join(f"{k} {v:,}" for k, v in
                                     r["info"][jax0]["param_counts"].items())
        for r in results))
  else:
    lines.append("FLOPs per train image / eval sample (counted, plain formulation): "
                 + "; ".join(f"{r['scale']} {r['info'][jax0]['train_flops'] / 1e9:.2f} "
                             f"GFLOP / {r['info'][jax0]['eval_flops'] / 1e6:.0f} MFLOP"
                             for r in results))
  if any(r.get("kernel") for r in results):
    lines.append("Kernel counters during each timing (/proc/vmstat, system-wide, median "
                 "over rounds): " + "; ".join(
                     f"{r['scale']} {n} {w} " + ", ".join(
                         f"{c} {v:,.0f}" for c, v in r["kernel"][(n, w)].items())
                     for r in results for (n, w) in r.get("kernel", {})))
  lines += [f"{r['scale']}: {idle_cpu_line(r['idle_cpu'])}" for r in results
            if r.get("idle_cpu")]
  lines.append("Every timing (the rounds in order): " + "; ".join(
      f"{r['scale']} " + ", ".join(
          f"{n} {w} " + "/".join(f"{v:.0f}" for v in r["runs"][(n, w)])
          for n in names for w in r.get("measures", MEASURES["mnist"]))
      for r in results))
  return "\n".join(lines)


def git_commit() -> str:
  """Short HEAD commit, '+ uncommitted changes' if tracked files differ from it."""
  git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                                  check=False).stdout.strip()
  commit = git("rev-parse", "--short", "HEAD") or "unknown"
  return commit + (" + uncommitted changes" if git("status", "--porcelain",
                                                   "--untracked-files=no") else "")


def write_results(block: str, path: str = RESULTS, section: str = RESULTS_SECTION,
                  marker: str = RESULTS_MARKER, command: str | None = None) -> None:
  """Appends this run's block (command, date, commit, machine line, output) to a
  section of RESULTS.md (default compare_torch's; other benchmarks pass their own
  section, marker and command), creating the section at the end if absent."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if marker not in text:
    text = text.rstrip("\n") + f"\n\n{section}\n\n{marker}\n"
  machine = block.splitlines()[0].lstrip("# ")
  entry = (f"### Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
           f"{git_commit()}\n\n- Command: `{command or command_line()}`\n"
           f"- Machine: {machine}\n\n```\n{block}\n```\n\n")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text.replace(marker, entry + marker))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--step", default="mnist", choices=STEPS,
                 help="mnist: the MNIST crVAE (train + IS-NLL eval); gan: the Stage1 "
                      "VAE-GAN / crVAE-GAN train step")
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="", help="MNIST row (crvae, the default, or another "
                 "row the PyTorch reference ports: crvae_t4, crvae_t16, cvae) or, with "
                 "--step=gan, crvaegan (default) or vaegan")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=10, help="timed train steps per round")
  p.add_argument("--torch_variants", default="eager,compile",
                 help="torch_reference (torch_gan_reference) variants, each its own worker "
                      "(eager, compile, compile-autotune)")
  p.add_argument("--eval_images", type=int, default=0,
                 help="test images per eval round (default: cpu 200, paper 32)")
  p.add_argument("--eval_samples", type=int, default=0,
                 help="K per image (default: the config's chunk, so chunks are full)")
  p.add_argument("--conv_impl", default="",
                 help="override model.conv_impl (fastest/auto/cpu/xla/onednn) of the JAX "
                      "worker")
  p.add_argument("--jax_variants", default="",
                 help="comma list of model.conv_impl values, one JAX worker each "
                      "(jax-IMPL), e.g. cpu,onednn; IMPL+fused also sets "
                      "model.fused_backward; default: one worker 'jax'")
  p.add_argument("--fused_backward", action="store_true",
                 help="model.fused_backward=True for the JAX worker")
  p.add_argument("--torch_malloc", default="default", choices=("default", "same"),
                 help="the torch workers' allocator: 'default' = glibc's malloc without "
                      "the huge-page tunable (as people run PyTorch), 'same' = this "
                      "process's setting (the JAX workers': jemalloc where found, else "
                      "the THP tunable)")
  p.add_argument("--write_results", action="store_true",
                 help=f"append the result block to {os.path.relpath(RESULTS, REPO)}")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--scale", default="", help=argparse.SUPPRESS)
  p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  args.row = args.row or DEFAULT_ROWS[args.step]
  if args.worker:
    worker_main(args)
    return
  args.torch_variants = args.torch_variants.split(",")
  args.jax_variants = [v for v in args.jax_variants.split(",") if v]
  try:
    for v in args.jax_variants:
      jax_variant_impl(v)
    if args.conv_impl:  # (a conv_impl only, no '+fused')
      check_conv_impl(args.conv_impl)
  except ValueError as e:
    p.error(str(e))
  if len(set(args.jax_variants)) != len(args.jax_variants):
    p.error(f"--jax_variants lists a conv_impl twice: {args.jax_variants}")
  if args.rounds < 5:
    print(f"compare_torch: --rounds={args.rounds}: the headline needs medians over >= 5 "
          "rounds", file=sys.stderr)
  configs = {scale: config_at_scale(args.step, args.row, scale)  # an unknown row fails
             for scale in args.scales.split(",")}
  if args.step == "mnist":
    try:
      from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      p.error(f"compare_torch needs PyTorch (pip install -r requirements-torch.txt): {e}")
    if not all(torch_reference.ports_config(c) for c in configs.values()):
      p.error(f"--row={args.row}: the PyTorch reference (benchmarks/torch_reference.py) "
              "ports the one-sample ELBO step of the crVAE and the cVAE only (rows "
              "crvae, crvae_t4, crvae_t16, cvae)")
  results = []
  for scale, config in configs.items():
    a = argparse.Namespace(**vars(args))
    if args.step == "mnist":
      a.chunk = config.eval.chunk_size
      a.eval_samples = args.eval_samples or a.chunk
      a.eval_images = args.eval_images or EVAL_IMAGES.get(scale, 32)
    results.append({**compare(scale, a), "row": args.row})
  block = report(results)
  print(block)
  if args.write_results:
    write_results(block)
    print(f"appended to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
