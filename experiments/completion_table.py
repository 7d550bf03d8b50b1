r"""Held-out completion, reconstruction and prior samples of Stage1 runs, paired per image.

  python -m experiments.completion_table \
      --workdirs=runs/emoji_vaegan_cpu,runs/emoji_crvaegan_cpu \
      --out=results/emoji_completion.md

Every run completes the SAME held-out images (`stage1.fixed_images` of the first run's
held-out split: `completion.emoji_split`, or `completion.tfds_split`; --seed picks them)
under the SAME masks (--masks; random blocks seeded by --seed), with the first run's
completion settings (`config.completion`: Adam steps, lr, gamma, tau; --steps
overrides the steps), as `--mode=complete` does (`crvae_jax.completion`). PSNR and SSIM
over the hidden pixels are scored per image; the held-out reconstruction error (MSE,
PSNR; `crvae_jax.reconstruction`) on --reconstruction_images of the split (chosen
by --seed; 0: all of it); and how much --prior_samples prior samples of each run look
like the training images (`crvae_jax.prior_samples`: SSIM with the most similar of
--reference_images training images, beside the same score of as many held-out images,
the scale; the same z for every run). The first workdir is the baseline: every other
run is compared with it by the mean of the per-image (per-sample) differences (run minus
baseline) and its standard error, std(ddof=1) / sqrt(N) of those differences (a paired
comparison: how hard an image is cancels out). One workdir scores one run alone.
WORKDIR@STEP scores that checkpoint instead of the latest (a run trained with
train.keep_checkpoint_every_steps keeps them): one run along its training, e.g.
--workdirs=runs/a@8000,runs/a@16000,runs/a.

Writes OUT (the markdown tables, with command, date, commit, machine and wall time),
OUT's stem + .json (every per-image value: the tables can be recomputed from it) and
+ .png (the first --grid_images images: per image the rows original, masked, each run's
completion; a column per mask) and + _prior.png (a row per run: its first 8 prior
samples, each beside its most similar training image).

Cost (--num_images, default 32): completion is `completion.steps` Adam steps per image,
mask and run, each a decoder and discriminator forward and backward pass. At the CPU
configs' 200 steps that is 6.4-8.6 s per image, mask and run (random-init emoji CPU
configs, 20-step completions of 8 and 16 images extrapolated to 200, one device of a
shared 2-core x86_64 VM, commit 6c2514e), ~90 s per image for 6 masks x 2 runs: 32
images take ~50 min, and give a paired standard error of 1/sqrt(32) ~ 0.18 of the spread
of the per-image differences (16 images: 0.25; all 337 held-out emoji of one set: ~8 h).
The prior samples cost one blur of the reference set per scored image (runs x
--prior_samples, plus the scale's held-out images): the one-run table of
results/pilots/emoji_vaegan_kl1e-3 (38 images x 3 masks; 256 samples and 38 held-out
images against 300 references) took 3.0 min with another job beside, about 1.3 min of
it these scores (a scratch run with a cheap pixel-distance score instead took 1.8 min);
the time grows with --reference_images. The table records its own wall time.

Refused before anything compiles (one line each): no workdir or one given twice, a workdir
that is not a trained Stage1 run, runs of different image sizes or data, a run whose
training data holds the images to complete (e.g. emoji_split 'all'; with
--allow_training_images the table says so instead, and scores no prior samples, whose
scale would then not be unseen images), unknown mask kinds, negative counts, --num_images
larger than the held-out split.
"""

import datetime
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from crvae_jax import host_memory, stats
from crvae_jax.config_checks import ConfigError
from experiments import launch
from experiments.provenance import cpu_description, git_commit

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Trained Stage1 workdirs (WORKDIR: its latest "
                  "checkpoint; WORKDIR@STEP: a kept one); the first is the baseline "
                  "of the paired differences.")
flags.DEFINE_integer("num_images", 32, "Held-out images to complete (see the module "
                     "doc for the cost).")
flags.DEFINE_string("masks", "center,left,right,top,bottom,random_blocks",
                    "Mask kinds (the hidden part), comma-separated.")
flags.DEFINE_integer("seed", 0, "Which images; where the random blocks fall.")
flags.DEFINE_integer("steps", None, "Adam steps on z (default: the first run's "
                     "completion.steps).")
flags.DEFINE_integer("reconstruction_images", 0, "Held-out images (chosen by --seed) "
                     "whose reconstruction error is scored (0: the whole split).")
flags.DEFINE_integer("prior_samples", 256, "Prior samples per run scored by their SSIM "
                     "with the most similar training image (0: none).")
flags.DEFINE_integer("reference_images", 500, "Training images (chosen by --seed; all "
                     "when there are fewer) the prior samples are compared with; the "
                     "cost grows with it.")
flags.DEFINE_integer("grid_images", 3, "Images shown in the PNG grid.")
flags.DEFINE_integer("num_devices", None, "Devices to split the images over (default all).")
flags.DEFINE_bool("allow_training_images", False, "Score runs whose training data holds "
                  "the images (the table then says they are NOT held out).")
flags.DEFINE_string("out", "results/emoji_completion.md", "The markdown table; the JSON "
                    "and PNG are written beside it.")



class BadInput(ConfigError):
  """A command line this table cannot run (printed as one line by `launch.run`)."""


METRICS = {"psnr": ("PSNR (dB)", 2), "ssim": ("SSIM", 3)}
RECONSTRUCTION = {"mse": ("MSE", 5), "psnr": ("PSNR (dB)", 2)}
PRIOR = {"ssim": ("SSIM with the most similar training image", 3)}
PRIOR_GRID_SAMPLES = 8  # per run in the _prior.png grid


def data_identity(config) -> dict:
  """What decides which images a Stage1 run sees, and their size."""
  d = config.data
  return {"image_size": config.model.get("image_size", 64), "source": d.source,
          "dataset": config.get("dataset", ""), "tfds_name": d.get("tfds_name", ""),
          "image_dir": d.get("image_dir", ""), "emoji_sets": d.get("emoji_sets", ""),
          "emoji_categories": d.get("emoji_categories", ""),
          "load_size": d.get("load_size", 64)}


def training_overlap(config, reference=None) -> str:
  """Why the images completed (those of `reference`'s held-out split, `config`'s own by
  default: `completion.completion_source` reads the first run's) were in `config`'s
  training data ('' if they were not)."""
  d, cc = config.data, (reference or config).completion
  if d.source == "emoji" and d.get("emoji_split", "all") != "train":
    return (f"data.emoji_split={d.get('emoji_split', 'all')!r} (trained on the "
            f"{cc.emoji_split!r} emoji too)")
  if d.source == "emoji" and cc.emoji_split != "heldout":
    return f"completion.emoji_split={cc.emoji_split!r} is not 'heldout'"
  completed = cc.tfds_split or (reference or config).data.tfds_split
  if d.source == "tfds" and completed == d.tfds_split:
    return f"the completed split {completed!r} is its training split"
  if d.source == "folder":
    return "data.source='folder' has no held-out split"
  return ""


def split_step(entry: str) -> tuple:
  """'runs/x@8000' -> ('runs/x', 8000): that kept checkpoint
  (train.keep_checkpoint_every_steps); 'runs/x' -> ('runs/x', None): the latest."""
  workdir, at, step = entry.rpartition("@")
  if not at:
    return entry, None
  if not step.isdigit():
    raise BadInput(f"--workdirs: {entry}: the part after '@' must be a step number")
  return workdir, int(step)


def check_runs(workdirs, kinds_text: str) -> tuple:
  """(configs, mask kinds) of the --workdirs (each WORKDIR or WORKDIR@STEP), or BadInput
  naming what is wrong."""
  from crvae_jax import completion  # pylint: disable=g-import-not-at-top
  runs = [split_step(entry) for entry in workdirs or []]
  if not runs or len({(os.path.abspath(w), s) for w, s in runs}) < len(runs):
    raise BadInput(f"--workdirs: give one or more distinct Stage1 workdirs, got "
                   f"{workdirs}")
  try:
    kinds = completion.parse_mask_kinds(kinds_text)
  except ValueError as e:
    raise BadInput(f"--masks: {e}".replace("completion.masks=", "")) from e
  configs = []
  for (workdir, step), entry in zip(runs, workdirs):
    try:
      configs.append(completion.compare_config(workdir))
    except (FileNotFoundError, ValueError) as e:
      raise BadInput(f"--workdirs: {' '.join(str(e).split())}") from e
    folder = os.path.join(workdir, "checkpoints")
    if step is not None and not os.path.isdir(os.path.join(folder, str(step))):
      kept = sorted(int(n) for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                    if n.isdigit())
      raise BadInput(f"--workdirs: {entry}: no checkpoint of step {step} (kept: {kept})")
  first = data_identity(configs[0])
  for workdir, config in zip(workdirs[1:], configs[1:]):
    other = data_identity(config)
    diff = [f"{k} {first[k]!r} != {other[k]!r}" for k in first if first[k] != other[k]]
    if diff:
      raise BadInput(f"--workdirs: {workdirs[0]} and {workdir} differ in "
                     f"{'; '.join(diff)}: a paired comparison needs the same images")
  return configs, kinds


def completion_settings(config, kinds, *, steps=None, seed: int = 0,
                        num_images: int = 1):
  """The first run's config.completion with this command's masks, steps, seed and
  num_images; ConfigError naming an impossible value."""
  from crvae_jax import completion  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  cc = config.completion
  cc.masks, cc.seed, cc.num_images = ",".join(kinds), seed, num_images
  if steps is not None:
    cc.steps = steps
  completion.check_completion_config(config)
  return cc


def paired_rows(per_image: dict, labels: list, specs: dict) -> list:
  """Markdown cells per metric: [name, mean +- SE of each label, then each later label
  minus the first, mean +- paired SE]; per_image {metric: {label: [N]}}."""
  rows = []
  for metric, (name, digits) in specs.items():
    values = per_image[metric]
    cells = [name]
    for label in labels:
      mean, se = stats.mean_and_stderr(values[label])
      cells.append(f"{mean:.{digits}f} ± {se:.{digits}f}")
    for label in labels[1:]:
      mean, se = stats.paired_difference(values[label], values[labels[0]])
      cells.append(f"{mean:+.{digits}f} ± {se:.{digits}f}")
    rows.append(cells)
  return rows


def prior_section(prior: dict, labels: list, head: str, rule: str) -> list:
  """The markdown lines of the prior samples' scores (`prior_samples.score`'s record)."""
  held, models = prior["held_out"], prior["models"]
  mean, se = stats.mean_and_stderr(held["ssim_per_image"])
  held_median = float(np.median(held["ssim_per_image"]))  # the share row's threshold
  per_sample = {"ssim": {label: models[label]["ssim_per_sample"] for label in labels}}
  blank = [""] * (len(labels) - 1)  # (no paired difference for these rows)
  lines = [
      "", f"Prior samples: {prior['num_samples']} per run (z ~ N(0, I) from seed "
      f"{prior['seed']}; BatchNorm averages), each scored by its "
      f"SSIM with the most similar of {prior['num_references']} training images "
      f"({prior['training_data']}; `crvae_jax/prior_samples.py`). The scale: the "
      f"{held['num_images']} held-out images score {mean:.3f} ± {se:.3f} (median "
      f"{held_median:.3f}) on the same measure. Higher is more like a real drawing, and a "
      "copy of a training image scores highest of all: look at the pairs below. Mean ± "
      "standard error over samples" + ("; paired differences as above (the same z where "
                                      "the latent shapes agree)." if blank else "."), "",
      "| metric " + head, "|---" + rule + "|"]
  lines += ["| " + " | ".join(cells) + " |"
            for cells in paired_rows(per_sample, labels, PRIOR)]
  lines += [
      "| median | " + " | ".join(
          [f"{np.median(models[x]['ssim_per_sample']):.3f}" for x in labels] + blank) + " |",
      "| share at or above the held-out median | " + " | ".join(
          [f"{np.mean(np.asarray(models[x]['ssim_per_sample']) >= held_median):.0%}"
           for x in labels] + blank) + " |",
      "", f"![prior samples and their most similar training images]"
      f"({os.path.basename(prior['grid'])})", "",
      f"A row per run ({', '.join(labels)}): its first prior samples, each followed by its "
      "most similar training image."]
  return lines


def format_report(record: dict) -> str:
  """The markdown of a record (`run`'s JSON), computed from its per-image values only."""
  labels, p, s = list(record["models"]), record["provenance"], record["settings"]
  diffs = [f"{label} − {labels[0]}" for label in labels[1:]]
  head = "| " + " | ".join(labels + diffs) + " |"
  rule = "|---" * (len(labels) + len(diffs))
  prior = record.get("prior")
  lines = [
      "# Held-out image completion and reconstruction"
      + (", prior samples" if prior else ""), "",
      f"Command: `{p['command']}`  ", f"Date: {p['date']}  ", f"Commit: {p['commit']}  ",
      f"Machine: {p['machine']}  ", f"Wall time: {p['wall_s'] / 60:.1f} min (with "
      "compilation; other jobs may have shared the machine)", "",
      *([f"Note: {p['note']}", ""] if p.get("note") else []),
      "| run | workdir | step | trained on | completed images held out? |",
      "|---|---|---|---|---|"]
  for label, m in record["models"].items():
    lines.append(f"| {label} | `{m['workdir']}` | {m['step']} | {m['trained_on']} | "
                 f"{'no: ' + m['overlap'] if m['overlap'] else 'yes'} |")
  lines += [
      "", f"Images: {s['num_images']} of the {s['split_size']} images of {s['split']} "
      f"(`stage1.fixed_images`, seed {s['seed']}), the same images and masks for every "
      f"run. Completion: {s['steps']} Adam steps of lr {s['learning_rate']} on z, gamma "
      f"{s['gamma']}, tau {s['tau']} (`crvae_jax/completion.py`). PSNR and SSIM over the "
      "hidden pixels; mean ± standard error over images"
      + (f"; the last column(s): mean ± standard error of the per-image difference (run "
         f"minus {labels[0]})." if len(labels) > 1 else "."), "",
      "| mask | hidden | metric " + head, "|---|---|---" + rule + "|"]
  for kind, per_label in record["completion"].items():
    per_image = {metric: {label: per_label[label][metric] for label in labels}
                 for metric in METRICS}
    for cells in paired_rows(per_image, labels, METRICS):
      lines.append(f"| {kind} | {record['hidden_fraction'][kind]:.0%} | "
                   + " | ".join(cells) + " |")
  recon = record["reconstruction"]
  per_image = {metric: {label: recon["models"][label][f"{metric}_per_image"]
                        for label in labels} for metric in RECONSTRUCTION}
  lines += [
      "", f"Held-out reconstruction (x^ = decode(posterior mean), BatchNorm averages): "
      f"{recon['num_images']} images of {s['split']}, MSE in [0, 1] units per pixel and "
      "channel; mean ± standard error" + ("; paired differences as above." if len(labels) > 1
                                          else "."), "",
      "| metric " + head, "|---" + rule + "|"]
  lines += ["| " + " | ".join(cells) + " |"
            for cells in paired_rows(per_image, labels, RECONSTRUCTION)]
  if prior:
    lines += prior_section(prior, labels, head, rule)
  lines += ["", f"![completions]({os.path.basename(record['grid'])})", "",
            f"The first {record['grid_images']} images: per image the rows original, "
            f"masked, {', '.join(labels)}; a column per mask ({', '.join(record['completion'])})."
            f" Per-image values: `{os.path.basename(record['json'])}`.", ""]
  return "\n".join(lines)


def run(workdirs, configs, kinds, *, num_images: int, seed: int, steps, out: str,
        reconstruction_images: int = 0, grid_images: int = 3, num_devices=None,
        allow_training_images: bool = False, command: str = "", source=None,
        num_prior_samples: int = 0, reference_images: int = 500,
        train_source=None) -> dict:
  """Check, complete, score and write OUT, its .json and .png (and _prior.png); returns
  the record. `source`: the held-out images (default: the first run's,
  `completion_source`); `train_source`: the training images the prior samples are
  compared with (default: the first run's config.data)."""
  # pylint: disable=g-import-not-at-top  (JAX loads after the flags are checked)
  from crvae_jax import (completion, distributed, images, prior_samples, reconstruction,
                         sharding)
  from crvae_jax.data import rgb as rgb_data
  from crvae_jax.families import stage1
  t0 = time.time()
  overlap = [training_overlap(c, configs[0]) for c in configs]
  if any(overlap) and not allow_training_images:
    bad = next(i for i, o in enumerate(overlap) if o)
    raise BadInput(f"--workdirs: {workdirs[bad]}: the images to complete are in its "
                   f"training data ({overlap[bad]}); pass --allow_training_images to "
                   "score them anyway")
  for name, value, least in (("num_images", num_images, 1), ("grid_images", grid_images, 0),
                             ("reconstruction_images", reconstruction_images, 0),
                             ("prior_samples", num_prior_samples, 0),
                             ("reference_images", reference_images, 1)):
    if value < least:
      raise BadInput(f"--{name}={value}: must be >= {least}")
  cc = completion_settings(configs[0], kinds, steps=steps, seed=seed,
                           num_images=num_images)
  source = source or completion.completion_source(configs[0])
  split = _images_completed(configs[0])
  if num_images > len(source):
    raise BadInput(f"--num_images={num_images} is more than the {len(source)} "
                   f"images of the held-out split ({split})")
  runs = []
  for entry, config in zip(workdirs, configs):
    config = config.copy_and_resolve_references()
    config.train.num_devices = None  # restored on the default device, whatever it was
    runs.append((config, *split_step(entry)))
  trained = completion.restore_runs(runs)  # FileNotFoundError: no checkpoint
  labels = [t.label for t in trained]
  mesh = sharding.make_mesh(num_devices)
  x = stage1.fixed_images(source, num_images, seed)  # [N, 64, 64, 3]
  logging.info("completing %d images x %d masks with %s (%d Adam steps each)", len(x),
               len(kinds), ", ".join(labels), cc.steps)
  done = completion.complete_with_each(trained, x, kinds, cc, mesh)
  n_rec = min(reconstruction_images or len(source), len(source))
  held_out = stage1.fixed_images(source, n_rec, seed)  # [n_rec, 64, 64, 3]
  generators = {t.label: (t.model, t.gen_vars) for t in trained}
  recon = reconstruction.compare_models(generators, held_out)
  prior, drawn = None, None
  if num_prior_samples and any(overlap):
    logging.warning("no prior samples scored: the held-out images are in a run's training "
                    "data, so they are no unseen scale")
  elif num_prior_samples:
    train_source = train_source or rgb_data.open_source(configs[0].data)
    references = stage1.fixed_images(train_source, reference_images, seed)  # [R, 64, 64, 3]
    scale = prior_scale(source, held_out, num_prior_samples, seed)
    prior, drawn = prior_samples.score(generators, references, scale,
                                       num_samples=num_prior_samples, seed=seed)
    prior["training_data"] = _training_data(configs[0])
  stem = os.path.splitext(out)[0]
  record = {
      "provenance": {
          "command": command, "date": datetime.datetime.now(datetime.timezone.utc)
          .strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
          "machine": f"{cpu_description()}, "
                     f"{distributed.describe()}, {mesh.size} used, jax "
                     f"{_jax_version()}",
          "wall_s": time.time() - t0},
      "settings": {"num_images": len(x), "seed": seed, "split": split,
                   "split_size": len(source), "masks": list(kinds),
                   **{k: cc[k] for k in ("steps", "learning_rate", "gamma", "tau")}},
      "models": {t.label: {"workdir": t.workdir, "step": int(t.step),
                           "variant": t.config.model.variant,
                           "row": t.config.get("row", ""),
                           "trained_on": _training_data(t.config), "overlap": o}
                 for t, o in zip(trained, overlap)},
      "hidden_fraction": {k: done[k]["hidden_fraction"] for k in kinds},
      "completion": {k: {label: {m: done[k][m][label].tolist() for m in METRICS}
                         for label in labels} for k in kinds},
      "reconstruction": recon,
      "prior": prior,
      "grid_images": min(grid_images, len(x)),
      "json": stem + ".json", "grid": stem + ".png"}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if record["grid_images"]:
    images.save_grid(record["grid"], completion.completion_grid(
        x, done, labels, range(record["grid_images"])), num_cols=len(kinds), scale=1)
  if prior:
    record["prior"]["grid"] = stem + "_prior.png"
    shown = min(PRIOR_GRID_SAMPLES, num_prior_samples)
    images.save_grid(record["prior"]["grid"], prior_samples.pairs(
        drawn, references, shown), num_cols=2 * shown, scale=1)
  with open(record["json"], "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  with open(out, "w", encoding="utf-8") as f:
    f.write(format_report(record))
  return record


def prior_scale(source, held_out, num_samples: int, seed: int):
  """The held-out images [min(S, split), 64, 64, 3] whose scores are the prior samples'
  scale, chosen by `seed`: `held_out` itself (the reconstruction's images, not loaded
  again) when it is that same set (same count, same seed), as for the whole emoji split."""
  # pylint: disable=g-import-not-at-top  (JAX loads after the flags are checked)
  from crvae_jax.families import stage1
  if min(num_samples, len(source)) == len(held_out):
    return held_out
  return stage1.fixed_images(source, num_samples, seed)


def _jax_version() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.__version__


def _images_completed(config) -> str:
  """Which images `completion.completion_source` reads for `config`."""
  d, cc = config.data, config.completion
  if d.source == "emoji":
    return f"emoji {d.emoji_sets}, split {cc.emoji_split}{_categories(d)}"
  if d.source == "tfds":
    return f"{d.tfds_name} split {cc.get('tfds_split', '') or d.tfds_split}"
  return f"{d.source} {d.get('image_dir', '')}"


def _categories(d) -> str:
  categories = d.get("emoji_categories", "")
  return f", categories {categories}" if categories else ""


def _training_data(config) -> str:
  d = config.data
  if d.source == "emoji":
    return f"emoji {d.emoji_sets}, split {d.get('emoji_split', 'all')}{_categories(d)}"
  if d.source == "tfds":
    return f"{d.tfds_name} {d.tfds_split}"
  return f"{d.source} {d.get('image_dir', '')}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  configs, kinds = check_runs(FLAGS.workdirs, FLAGS.masks)
  launch.configure_logging()
  launch.enable_compilation_cache(FLAGS.compilation_cache_dir)
  record = run(FLAGS.workdirs, configs, kinds, num_images=FLAGS.num_images,
               seed=FLAGS.seed, steps=FLAGS.steps, out=FLAGS.out,
               reconstruction_images=FLAGS.reconstruction_images,
               grid_images=FLAGS.grid_images, num_devices=FLAGS.num_devices,
               allow_training_images=FLAGS.allow_training_images,
               num_prior_samples=FLAGS.prior_samples,
               reference_images=FLAGS.reference_images,
               command=" ".join(["python -m experiments.completion_table"] + sys.argv[1:]))
  files = [record["json"], record["grid"]] + ([record["prior"]["grid"]] if record["prior"]
                                                else [])
  print(f"wrote {FLAGS.out}, {', '.join(files)} "
        f"({record['provenance']['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
  # (here, not at import: experiments.main's command line, parsed in the same test
  # process, has no --workdirs)
  flags.mark_flag_as_required("workdirs")
  host_memory.reexec_with_hugepages()
  launch.run(main)
