r"""How far is the importance-sampled NLL from the truth? IS vs AIS vs BDMC on trained runs.

  python -m experiments.estimator_gap \
      --workdirs=runs/mnist_table_cpu/vae,runs/mnist_table_cpu/crvae \
      --num_images=100 --is_k=100,1000,10000 --ais_steps=100,1000,5000 \
      --bdmc_images=20 --bdmc_steps=100,1000,5000

For one or two trained MNIST workdirs, on the first --num_images images of the test set
(the same images for every estimator and model, so differences are paired):
  - IS at each K of --is_k (crvae_jax.likelihood, q(z|x) as proposal);
  - forward AIS at each T of --ais_steps (crvae_jax.ais, --chains chains, from --init);
  - BDMC on --bdmc_images images simulated from each model (z ~ p(z), x ~ p(x|z),
    binarized): forward AIS (lower bound) and reverse AIS from the exact z (upper
    bound) at each T of --bdmc_steps; their gap bounds AIS's own error at that T.
Writes --out (markdown: command, date, commit, machine, every number of the run, and,
for two runs, whether IS ranks them as AIS does and how much of the IS difference is
estimator bias) and per-image .npy files (nats, NLL = -log p(x)) under --npy_dir.

Each finished estimate (one model, one K or T) is kept under --npy_dir/cache with the
settings it used and a hash of the weights; a rerun of the same command reuses them, so
a run killed part-way (the end of a session) resumes where it stopped, and a second
model can be added later. The cache is small and committed with the results: if the
runs directory is lost and the models train again to the same weights (the same CPU
model; on another, XLA's code and so the weights differ), the finished estimates count.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.nll_eval import machine_line
from crvae_jax import ais, host_memory, likelihood, sharding, stats, trained
from crvae_jax.families import mnist as mnist_family
from experiments import table_stats
from experiments.provenance import git_commit


def _ints(text: str):
  return [int(v) for v in text.split(",") if v]


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdirs", required=True, help="one or two trained MNIST workdirs")
  p.add_argument("--labels", default="", help="comma-separated; default: folder names")
  p.add_argument("--num_images", type=int, default=100, help="test images (first N)")
  p.add_argument("--is_k", default="100,1000,10000")
  p.add_argument("--ais_steps", default="100,1000,5000", help="T values, forward AIS")
  p.add_argument("--bdmc_images", type=int, default=20, help="simulated images per model")
  p.add_argument("--bdmc_steps", default="100,1000,5000")
  p.add_argument("--chains", type=int, default=16)
  p.add_argument("--leapfrog", type=int, default=10)
  p.add_argument("--step_size", type=float, default=0.05, help="initial, adapted")
  p.add_argument("--init", default="prior", choices=ais.INITS)
  p.add_argument("--batch_size", type=int, default=16, help="images per call")
  p.add_argument("--chunk_size", type=int, default=128, help="IS samples per chunk")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="results/estimator_gap.md")
  p.add_argument("--npy_dir", default="results/estimator_gap")
  return p.parse_args(argv)


def _estimator_code_hash() -> str:
  """Hash of the estimators' source (crvae_jax/likelihood.py and ais.py): a change of
  either invalidates every cached estimate."""
  h = hashlib.sha256()
  for module in (likelihood, ais):
    with open(module.__file__, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def common_key(args, workdir: str, run, images) -> dict:
  """What every estimate of one model depends on: the trained weights (hashed, so a
  workdir retrained to the same step is not mistaken for the old one), the images, the
  estimator code, and the seed and batching."""
  return {"workdir": os.path.abspath(workdir), "step": int(run.step),
          "variables": likelihood.arrays_digest(*jax.tree_util.tree_leaves(run.variables)),
          "images": likelihood.arrays_digest(images), "estimator_code": _estimator_code_hash(),
          "batch_size": args.batch_size, "seed": args.seed}


def _ais_key(args) -> dict:
  return {"chains": args.chains, "leapfrog": args.leapfrog, "step_size": args.step_size,
          "init": args.init}


class EntryCache:
  """One file per (model, estimate) under `directory`: a run killed part-way (a session
  ends, a job is preempted) resumes from the estimates it finished. An entry is reused
  only if its stored settings equal the common key plus the estimate's own settings;
  otherwise (or if the file is unreadable) it is recomputed and overwritten. Each entry
  keeps the commit, date and machine it was measured on, for the report."""

  def __init__(self, directory: str, label: str, key: dict):
    self.directory, self.label, self.key = directory, label, key
    os.makedirs(directory, exist_ok=True)

  def _path(self, entry: str) -> str:
    return os.path.join(self.directory, f"{self.label}_{entry.replace(' ', '_')}.npz")

  def get(self, entry: str, own_key: dict, compute):
    """compute() -> (arrays: dict of np arrays, scalars: dict of floats). Returns
    (arrays, scalars, provenance) where provenance is None for a fresh estimate and
    {'commit', 'date', 'machine'} for a reused one."""
    path, key = self._path(entry), {**self.key, **own_key}
    if os.path.exists(path):
      try:
        with np.load(path, allow_pickle=False) as f:
          meta = json.loads(str(f["meta"]))
          arrays = {k: f[k] for k in f.files if k != "meta"}
        if meta["key"] == key:
          print(f"{self.label} {entry}: reusing {path} (measured {meta['date']}, "
                f"commit {meta['commit']})", flush=True)
          return arrays, meta["scalars"], {k: meta[k] for k in ("commit", "date",
                                                                 "machine")}
        changed = sorted(k for k in key if meta["key"].get(k) != key[k])
        print(f"{self.label} {entry}: {path} was made with other {changed}; "
              "recomputing", flush=True)
      except Exception as e:  # pylint: disable=broad-except  # truncated, empty, old
        print(f"{self.label} {entry}: {path} is unreadable ({type(e).__name__}: {e}); "
              "recomputing", flush=True)
    arrays, scalars = compute()
    meta = json.dumps({"key": key, "scalars": scalars, "commit": git_commit(),
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "machine": machine_line()})
    fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, meta=np.asarray(meta), **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    return arrays, scalars, None


def measure(label, run, images, args, mesh, cache: EntryCache):
  """{'is': {K: nll [N]}, 'ais': {T: (nll [N], acceptance)}, 'bdmc': {T: (lower, upper)},
  'seconds': {...}, 'reused': {entry: provenance}} for one restored run
  (`trained.TrainedModel`); every estimate goes through `cache`."""
  model, variables = run.model, run.variables
  out = {"label": label, "is": {}, "ais": {}, "bdmc": {}, "seconds": {}, "reused": {}}
  common = dict(batch_size=args.batch_size, seed=args.seed, progress=True)

  def get(entry, own_key, compute):
    arrays, scalars, provenance = cache.get(entry, own_key, compute)
    out["seconds"][entry] = scalars["seconds"]
    if provenance:
      out["reused"][entry] = provenance
    return arrays, scalars

  for k in _ints(args.is_k):
    def is_k(k=k):
      t = time.perf_counter()
      res = likelihood.estimate_log_likelihood(
          model, variables, images, mesh, num_samples=k,
          chunk_size=min(k, args.chunk_size), report_k=k, **common)
      return {"nll": -res.log_px}, {"seconds": time.perf_counter() - t}
    arrays, _ = get(f"IS K={k}", {"chunk_size": min(k, args.chunk_size)}, is_k)
    out["is"][k] = arrays["nll"]
  settings = lambda steps: ais.Settings(steps, args.chains, args.leapfrog, args.step_size,
                                        0.65, args.init)
  for steps in _ints(args.ais_steps):
    def ais_t(steps=steps):
      t = time.perf_counter()
      res = ais.estimate_log_likelihood(model, variables, images, mesh, settings(steps),
                                        report_k=args.chains, **common)
      return {"nll": -res.log_px}, {"seconds": time.perf_counter() - t,
                                    "acceptance": float(res.acceptance.mean())}
    arrays, scalars = get(f"AIS T={steps}", _ais_key(args), ais_t)
    out["ais"][steps] = (arrays["nll"], scalars["acceptance"])
  if args.bdmc_images:
    sim, z = ais.simulate(model, variables, args.bdmc_images, seed=args.seed)
    for steps in _ints(args.bdmc_steps):
      def bdmc_t(steps=steps):
        t = time.perf_counter()
        res = ais.bdmc(model, variables, sim, z, mesh, settings(steps),
                       report_k=args.chains, **common)
        # NLL: the forward (lower-bound) estimate is >= the reverse one.
        return ({"lower": -res.lower.log_px, "upper": -res.upper.log_px},
                {"seconds": time.perf_counter() - t})
      arrays, _ = get(f"BDMC T={steps}", {**_ais_key(args),
                                          "bdmc_images": args.bdmc_images}, bdmc_t)
      out["bdmc"][steps] = (arrays["lower"], arrays["upper"])
  return out


def save_per_image(results, npy_dir):
  os.makedirs(npy_dir, exist_ok=True)
  for r in results:
    arrays = {f"IS_K{k}_nll": v for k, v in r["is"].items()}
    arrays.update({f"AIS_T{t}_nll": v[0] for t, v in r["ais"].items()})
    for t, (lo, up) in r["bdmc"].items():
      arrays[f"BDMC_T{t}_simulated_nll_from_forward"] = lo
      arrays[f"BDMC_T{t}_simulated_nll_from_reverse"] = up
    for name, values in arrays.items():
      np.save(os.path.join(npy_dir, f"{r['label']}_{name}.npy"),
              np.asarray(values, np.float64))


def report(results, args, command: str, seconds_total: float) -> str:
  """The markdown report: every number comes from `results`."""
  lines = ["# How far is the IS NLL from the truth? IS vs AIS vs BDMC", "",
           f"- Command: `{command}`",
           f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit "
           f"{git_commit()}; this invocation {seconds_total / 60:.1f} min",
           f"- Machine: {machine_line()}",
           f"- Test images: the first {args.num_images} of the test set; AIS: "
           f"{args.chains} chains, {args.leapfrog} leapfrog steps, initial step "
           f"{args.step_size}, target acceptance 0.65, from the {args.init}, sigmoid "
           f"schedule; BDMC on {args.bdmc_images} images simulated from each model; "
           f"seed {args.seed}.",
           "- NLL in nats (mean +- standard error over images). Every estimate is an upper "
           "bound on the true NLL in expectation, except BDMC's reverse one (a lower "
           "bound, on simulated data): lower is closer to the truth.", ""]
  seconds = lambda r, entry: f"{r['seconds'][entry]:.0f}" + (
      " *" if entry in r["reused"] else "")
  lines += ["| model | estimator | NLL | seconds |", "|---|---|---|---|"]
  for r in results:
    for k, v in r["is"].items():
      m, se = stats.mean_and_stderr(v)
      lines.append(f"| {r['label']} | IS K={k} | {m:.2f} +- {se:.2f} | "
                   f"{seconds(r, f'IS K={k}')} |")
    for t, (v, acc) in r["ais"].items():
      m, se = stats.mean_and_stderr(v)
      lines.append(f"| {r['label']} | AIS T={t} (acceptance {acc:.2f}) | {m:.2f} +- "
                   f"{se:.2f} | {seconds(r, f'AIS T={t}')} |")
  lines += ["", "BDMC on simulated data (NLL; the truth lies between the two, the gap "
            "bounds AIS's error at that T):", "",
            "| model | T | forward AIS (upper NLL) | reverse AIS (lower NLL) | gap | "
            "seconds |", "|---|---|---|---|---|---|"]
  for r in results:
    for t, (lo, up) in r["bdmc"].items():
      gap = stats.mean_and_stderr(lo - up)
      lines.append(f"| {r['label']} | {t} | {lo.mean():.2f} | {up.mean():.2f} | "
                   f"{gap[0]:.2f} +- {gap[1]:.2f} | {seconds(r, f'BDMC T={t}')} |")
  reused = [(r["label"], entry, p) for r in results for entry, p in r["reused"].items()]
  if reused:
    lines += ["", "\\* measured by an earlier invocation of this command (same weights, "
              "images, settings and estimator code), reused from the cache:", ""]
    lines += [f"- {label} {entry}: {p['date']}, commit {p['commit']}, machine "
              f"`{p['machine']}`" for label, entry, p in reused]
  for r in results:
    if r["ais"] and r["is"]:
      best_t, k_max = max(r["ais"]), max(r["is"])
      lines.append("")
      lines.append(f"- {r['label']}: IS K={k_max} minus AIS T={best_t}: "
                   "{:.2f} +- {:.2f} nats per image (a lower bound on IS's bias when "
                   "positive: AIS's NLL is itself an upper bound)".format(
                       *stats.mean_and_stderr(r["is"][k_max] - r["ais"][best_t][0])))
  if len(results) == 2 and results[0]["ais"] and results[0]["is"]:
    lines += ["", "## Answers", ""] + answers(*results)
  return "\n".join(lines) + "\n"


def _verdict(m: float, se: float) -> str:
  if abs(m) < table_stats.NOISE_SE * se:
    return "within noise"
  return "lower" if m < 0 else "higher"


def answers(a, b):
  """Does IS rank b against a as AIS does; how much of the IS difference is bias. Every
  difference is paired over the same images, with its standard error over images; one
  under table_stats.NOISE_SE standard errors from zero (the table's rule) is called
  within noise."""
  best_t = max(a["ais"])
  d_ais = b["ais"][best_t][0] - a["ais"][best_t][0]
  m_ais, se_ais = stats.mean_and_stderr(d_ais)
  v_ais = _verdict(m_ais, se_ais)
  lines = [f"Paired differences NLL({b['label']}) - NLL({a['label']}) on the same "
           f"{len(d_ais)} images (mean +- standard error; 'within noise': under "
           f"{table_stats.NOISE_SE:g} standard errors from zero). AIS T={best_t}: "
           f"{m_ais:+.2f} +- {se_ais:.2f} (" + ("within noise)." if v_ais == "within noise" else
                                f"{b['label']} {v_ais} than {a['label']})."), ""]
  lines += ["| estimator | difference | verdict | same ranking as AIS | IS minus AIS "
            "difference (estimator bias) |", "|---|---|---|---|---|"]
  for k in sorted(a["is"]):
    d_is = b["is"][k] - a["is"][k]
    m, se = stats.mean_and_stderr(d_is)
    v = _verdict(m, se)
    same = ("both within noise" if v == v_ais == "within noise" else "yes" if v == v_ais
            else "no (opposite)" if "within noise" not in (v, v_ais) else "cannot tell")
    bias = stats.mean_and_stderr(d_is - d_ais)
    lines.append(f"| IS K={k} | {m:+.2f} +- {se:.2f} | {v} | {same} | "
                 f"{bias[0]:+.2f} +- {bias[1]:.2f} |")
  k_max = max(a["is"])
  bias = stats.mean_and_stderr((b["is"][k_max] - a["is"][k_max]) - d_ais)
  gaps = [(r["label"], max(r["bdmc"]),
           *stats.mean_and_stderr(r["bdmc"][max(r["bdmc"])][0] - r["bdmc"][max(r["bdmc"])][1]))
          for r in (a, b) if r["bdmc"]]
  lines += ["", f"Estimator bias in the IS K={k_max} difference: {bias[0]:+.2f} +- "
            f"{bias[1]:.2f} nats ({_verdict(*bias)}), the part of IS's difference that "
            f"AIS T={best_t} does not see. AIS is itself an upper bound on the NLL; its "
            "remaining error is bounded, on data simulated from each model, by the BDMC "
            "gap: " + ("; ".join(f"{label} {g:.2f} +- {se:.2f} nats at T={t}"
                                for label, t, g, se in gaps) if gaps else "not run")
            + "."]
  return lines


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  workdirs = [w for w in args.workdirs.split(",") if w]
  if not 1 <= len(workdirs) <= 2:
    raise SystemExit(f"--workdirs: one or two, got {len(workdirs)}")
  labels = [l for l in args.labels.split(",") if l] or [
      os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(labels) != len(workdirs):
    raise SystemExit(f"--labels: one per workdir, got {labels}")
  start = time.perf_counter()
  runs = [trained.restore(w) for w in workdirs]
  images = mnist_family.load_data(runs[0].config).test_binary[:args.num_images]
  mesh = sharding.make_mesh()
  results = []
  for label, workdir, run in zip(labels, workdirs, runs):
    cache = EntryCache(os.path.join(args.npy_dir, "cache"), label,
                       common_key(args, workdir, run, images))
    results.append(measure(label, run, images, args, mesh, cache))
    print(f"{label}: done after {(time.perf_counter() - start) / 60:.1f} min", flush=True)
  save_per_image(results, args.npy_dir)
  command = "python -m experiments.estimator_gap " + " ".join(
      sys.argv[1:] if argv is None else argv)
  text = report(results, args, command, time.perf_counter() - start)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  return results


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()  # before JAX runs anything; see crvae_jax.host_memory
  main()
