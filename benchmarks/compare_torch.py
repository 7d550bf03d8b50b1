r"""JAX vs PyTorch on the same MNIST crVAE and the same CPU, in one run (issue 7).

  pip install -r requirements-torch.txt  # PyTorch 2.13 CPU (not a crvae_jax dependency)
  python benchmarks/compare_torch.py --scales=cpu,paper --rounds=3

Per scale, two worker processes are started, one per framework (so neither's thread
pool or allocator disturbs the other), each building the model of that scale:
  JAX      crvae_jax's data-parallel train step and IS-NLL estimator
           (benchmarks/train_throughput.py, nll_eval.py), conv_impl from the config
           ('auto': the CPU kernels on CPU);
  PyTorch  benchmarks/torch_reference.py (same architecture and parameter count),
           channels_last, train mode for training, inference_mode for evaluation.
Both workers inherit this process's environment, so both run with or both without
glibc's transparent-huge-page tunable (crvae_jax/host_memory.py: on where it helps,
unless CRVAE_JAX_HUGEPAGES=0; the header says "malloc THP on/off"; what it gains for each
framework is measured by benchmarks/ab_host_memory.py).
The controller then alternates them, one framework idle while the other is timed:
every round times JAX train, torch train, torch eval, JAX eval (the order flips each
round), and each figure is the median over rounds. Both processes also measure their
fp32 matmul peak (4096^2, best of 5) in this run.

Columns: start-up = seconds from starting the worker process to the end of its first
training step (imports, init, compilation); train img/s at global batch 128 (one latent
sample, Adam); eval = decoder samples/s of the IS-NLL estimator on the same images, K,
chunk and batch (--eval_samples defaults to the chunk so a whole chunk is decoded);
ratio = JAX / PyTorch (> 1: JAX faster); "of peak" = FLOP rate / JAX's matmul peak, with
FLOPs counted from the traced plain formulation (benchmarks/flops.py: scans counted T
times; train = forward + backward of the objective; eval = decoder per sample +
encoder / K).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
from crvae_jax import host_memory
from experiments.configs import mnist as mnist_configs

EVAL_IMAGES = {"cpu": 200, "paper": 32}


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
          "runtime": machine_line(), "conv_impl": config.model.conv_impl,
          "params": sum(x.size for x in jax.tree.leaves(trainer.variables()["params"])),
          "train_flops": train_flops_per_image(config),
          "eval_flops": flops_per_sample(config, args.eval_samples)},
  }
  while True:
    yield handlers[(yield)]()


def _torch_worker(config, args):
  import torch
  from benchmarks import torch_reference as ref
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = ref.model_from_config(config)
  trainer = _TorchTrainer(ref, model, config)
  yield {"ready": True}

  def evaluate():
    return ref.eval_samples_per_s(model, args.eval_images, args.eval_samples, args.chunk,
                                  config.eval.batch_size)

  def peak(n=4096):
    a = torch.ones(n, n)
    a @ a
    best = float("inf")
    for _ in range(5):
      t = time.perf_counter()
      a @ a
      best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9

  handlers = {"train": lambda: trainer.run(args.steps), "eval": evaluate, "peak": peak,
              "info": lambda: {"runtime": f"torch {torch.__version__}, "
                                          f"{torch.get_num_threads()} threads, channels_last",
                               "params": ref.num_params(model)}}
  while True:
    yield handlers[(yield)]()


class _TorchTrainer:
  """torch_reference's train step with its optimizer kept across calls (as JAX's)."""

  def __init__(self, ref, model, config):
    import numpy as np
    import torch
    self.ref, self.model, self.config = ref, model, config
    b = config.train.batch_size
    images = np.random.default_rng(0).integers(0, 256, (b * 4, 1, 28, 28), dtype=np.uint8)
    self.batches = [torch.from_numpy(images[i::4].astype(np.float32) / 255.0)
                    .contiguous(memory_format=torch.channels_last) for i in range(4)]
    self.opt, self.lstm_params = ref.make_optimizer(model, config)
    self.weights = ref.block_weights(config)
    model.train()
    self._steps(1)

  def _steps(self, n, first=0):
    for i in range(n):
      loss = self.ref.train_step(self.model, self.opt, self.lstm_params,
                                 self.config.optim.lstm_grad_clip,
                                 self.batches[(first + i) % 4], self.weights)
    return float(loss)

  def run(self, steps, warmup=1):
    self.model.train()
    self._steps(warmup)
    t = time.perf_counter()
    loss = self._steps(steps, first=1)
    per_s = steps * self.config.train.batch_size / (time.perf_counter() - t)
    if loss != loss:
      raise FloatingPointError("non-finite training loss")
    return per_s


def worker_main(args):
  """(In a worker process.) Reads one command per stdin line, answers one JSON line."""
  config = mnist_configs.config_at_scale(args.row, args.scale)
  if args.conv_impl:
    config.model.conv_impl = args.conv_impl
  gen = (_jax_worker if args.worker == "jax" else _torch_worker)(config, args)
  print("RESULT " + json.dumps(next(gen)), flush=True)  # ready: the first step is done
  next(gen)  # the rest of the set-up (JAX compiles its evaluator), to the first command
  print("RESULT " + json.dumps({"setup": True}), flush=True)
  for line in sys.stdin:
    result = gen.send(line.strip())
    print("RESULT " + json.dumps(result), flush=True)
    next(gen)


# --------------------------------------------------------------------------- controller

class Worker:
  """One framework's worker process; `env` (default: this process's) is its environment,
  e.g. with or without crvae_jax.host_memory's malloc tunable."""

  def __init__(self, framework: str, scale: str, args, env=None):
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={framework}",
           f"--scale={scale}", f"--row={args.row}", f"--steps={args.steps}",
           f"--eval_images={args.eval_images}", f"--eval_samples={args.eval_samples}",
           f"--chunk={args.chunk}", f"--conv_impl={args.conv_impl}"]
    self.name = framework
    t = time.perf_counter()
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env)
    self._read()
    self.startup_s = time.perf_counter() - t
    # Wait for the rest of its set-up, so that it does not run alongside the next
    # worker's start-up or timings.
    self._read()

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith("RESULT "):
        return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the {self.name} worker exited (code {self.proc.wait()}); its "
                       "error is printed above")

  def ask(self, command: str):
    self.proc.stdin.write(command + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def compare(scale: str, args) -> dict:
  """Start both workers (one after the other), alternate their timings."""
  jx = Worker("jax", scale, args)
  th = Worker("torch", scale, args)
  runs = {(f, m): [] for f in ("jax", "torch") for m in ("train", "eval", "peak")}
  for r in range(args.rounds):
    order = [(jx, "train"), (th, "train"), (th, "eval"), (jx, "eval"),
             (jx, "peak"), (th, "peak")]
    if r % 2:
      order = [(th, "train"), (jx, "train"), (jx, "eval"), (th, "eval"),
               (th, "peak"), (jx, "peak")]
    for w, what in order:
      runs[(w.name, what)].append(w.ask(what))
      print(f"  [{scale} round {r + 1}] {w.name:5s} {what:5s} {runs[(w.name, what)][-1]:.1f}",
            file=sys.stderr, flush=True)
  info = {"jax": jx.ask("info"), "torch": th.ask("info")}
  jx.close()
  th.close()
  med = {k: statistics.median(v) for k, v in runs.items()}
  batch = mnist_configs.config_at_scale(args.row, scale).eval.batch_size
  return {"scale": scale, "startup": {"jax": jx.startup_s, "torch": th.startup_s},
          "median": med, "runs": runs, "info": info,
          "eval": f"{args.eval_samples}, {min(args.chunk, args.eval_samples)} x {batch}, "
                  f"{args.eval_images} images"}


def report(results, args) -> str:
  first = results[0]["info"]
  lines = [f"# {first['jax']['runtime']} | {first['torch']['runtime']}",
           f"# command: python benchmarks/compare_torch.py --scales={args.scales} "
           f"--rounds={args.rounds} --steps={args.steps}"
           + (f" --conv_impl={args.conv_impl}" if args.conv_impl else ""),
           "",
           "| scale | params | matmul peak GFLOP/s jax / torch | start-up s jax / torch | "
           "train img/s jax / torch | train ratio | train of peak jax / torch | "
           "eval K, chunk x batch, images | eval samples/s jax / torch | eval ratio | "
           "eval of peak jax / torch |",
           "|---" * 11 + "|"]
  for res in results:
    m, info, s = res["median"], res["info"], res["startup"]
    peak = m[("jax", "peak")]
    tf, ef = info["jax"]["train_flops"], info["jax"]["eval_flops"]
    pct = lambda rate, flops: f"{rate * flops / 1e9 / peak:.0%}"
    assert info["jax"]["params"] == info["torch"]["params"], info
    lines.append(
        f"| {res['scale']} | {info['jax']['params'] / 1e6:.2f} M | "
        f"{peak:.0f} / {m[('torch', 'peak')]:.0f} | {s['jax']:.1f} / {s['torch']:.1f} | "
        f"{m[('jax', 'train')]:.1f} / {m[('torch', 'train')]:.1f} | "
        f"**{m[('jax', 'train')] / m[('torch', 'train')]:.2f}x** | "
        f"{pct(m[('jax', 'train')], tf)} / {pct(m[('torch', 'train')], tf)} | "
        f"{res['eval']} | "
        f"{m[('jax', 'eval')]:.0f} / {m[('torch', 'eval')]:.0f} | "
        f"**{m[('jax', 'eval')] / m[('torch', 'eval')]:.2f}x** | "
        f"{pct(m[('jax', 'eval')], ef)} / {pct(m[('torch', 'eval')], ef)} |")
  lines.append("")
  lines.append("FLOPs per train image / eval sample (counted, plain formulation): " + "; ".join(
      f"{r['scale']} {r['info']['jax']['train_flops'] / 1e9:.2f} GFLOP / "
      f"{r['info']['jax']['eval_flops'] / 1e6:.0f} MFLOP" for r in results))
  lines.append("Every timing (median of the rounds): " + "; ".join(
      f"{r['scale']} " + ", ".join(f"{f} {w} " + "/".join(f"{v:.0f}" for v in r["runs"][(f, w)])
                                     for f in ("jax", "torch") for w in ("train", "eval"))
      for r in results))
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--scales", default="cpu,paper")
  p.add_argument("--row", default="crvae")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=10, help="timed train steps per round")
  p.add_argument("--eval_images", type=int, default=0,
                 help="test images per eval round (default: cpu 200, paper 32)")
  p.add_argument("--eval_samples", type=int, default=0,
                 help="K per image (default: the config's chunk, so chunks are full)")
  p.add_argument("--conv_impl", default="", help="override model.conv_impl (auto/cpu/xla)")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--scale", default="", help=argparse.SUPPRESS)
  p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker_main(args)
    return
  results = []
  for scale in args.scales.split(","):
    a = argparse.Namespace(**vars(args))
    a.chunk = mnist_configs.config_at_scale(args.row, scale).eval.chunk_size
    a.eval_samples = args.eval_samples or a.chunk
    a.eval_images = args.eval_images or EVAL_IMAGES.get(scale, 32)
    results.append(compare(scale, a))
  print(report(results, args))


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
