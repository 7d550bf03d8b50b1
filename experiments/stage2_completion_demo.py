r"""CPU-scale demos of Stage2 and image completion on the emoji Stage1 runs; commits results.

  python -m experiments.rgb_demo                    # first: both Stage1 runs (runs/)
  python -m experiments.stage2_completion_demo      # then: Stage2 and completion

Runs `experiments/main.py` (the same command lines a user types) for:
  stage2    experiments/configs/stage2.py:emoji_crvaegan,cpu on runs/emoji_crvaegan_cpu,
            twice: gamma 0 -> runs/emoji_crvaegan_stage2_cpu, and gamma 1 with a
            randomly initialised VGG11 (runs/weights/vgg11_random.npz, written first;
            no ImageNet weights offline) -> runs/emoji_crvaegan_stage2_randvgg_cpu
            (train, then sample; an interrupted run resumes, a finished one is only
            sampled);
then copies the grids and metrics to results/emoji_crvaegan_stage2_cpu/ with summary.md
(command, date, machine, commit, wall time); and for
  complete  `python -m experiments.completion_table` on runs/emoji_vaegan_cpu and
            runs/emoji_crvaegan_cpu (VAE-GAN vs crVAE-GAN on the same held-out images
            and masks, paired standard errors) -> results/emoji_completion.{md,json,png}.
"""

import datetime
import glob
import json
import os
import shutil
import subprocess
import sys

from absl import app, flags

from experiments.configs import rgb as rgb_configs
from experiments.provenance import REPO, cpu_description, emoji_data_line, git_commit

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", ["stage2", "complete"], "Which demos to run.")
flags.DEFINE_string("runs_dir", "runs", "Where the Stage1 runs are and Stage2 goes.")
flags.DEFINE_string("results_dir", "results", "Where the grids and summaries go.")


def run_main(*args: str) -> None:
  """Runs experiments.main with args."""
  subprocess.run([sys.executable, "-m", "experiments.main", *args], check=True, cwd=REPO)


def header(title: str, command: str, commit: str) -> list:
  return [f"# {title}", "",
          f"Command: `python -m experiments.stage2_completion_demo` (runs `{command}`)  ",
          f"Date: {datetime.date.today().isoformat()}  ",
          f"Machine: {cpu_description()}, "
          "CPU only, 1 device  ",
          f"Commit: {commit}  ", "",
          f"Data: {emoji_data_line(rgb_configs.get_config('emoji_crvaegan,cpu'))}. "
          "Drawings, not photographs, at CPU scale: this shows that the pipeline works; it "
          "is not the paper's experiment.", ""]


# (workdir suffix, extra flags, what it is)
STAGE2_VARIANTS = (
    ("", [], "gamma 0: adversarial terms only (the paper's \"without perceptual loss\"). "
     "Only the unconditional discriminator shapes the output here: nothing asks it to keep "
     "its input's content"),
    ("_randvgg", ["--config.objective.gamma=1",
                  "--config.perceptual.weights=runs/weights/vgg11_random.npz",
                  "--config.perceptual.layer=relu2_1", "--config.train.num_steps=300"],
     "gamma 1 with a RANDOMLY initialised VGG11 cut at relu2_1 (no ImageNet weights "
     "offline), 300 steps (the VGG11 pass at 128x128 makes a CPU step about four times as slow): "
     "exercises the perceptual path; pretrained features would differ"),
)


def stage2_demo() -> None:
  commit = git_commit()  # the code that trains, before anything is written
  stage1 = os.path.join(FLAGS.runs_dir, "emoji_crvaegan_cpu")
  if not glob.glob(os.path.join(stage1, "checkpoints", "*")):
    raise app.UsageError(f"no Stage1 checkpoint in {stage1}: run "
                         "`python -m experiments.rgb_demo --rows=emoji_crvaegan` first")
  subprocess.run([sys.executable, "-m", "experiments.convert_torchvision_weights",
                  "--arch=vgg11", "--random_init=0",
                  "--output=runs/weights/vgg11_random.npz"], check=True, cwd=REPO)
  out = os.path.join(FLAGS.results_dir, "emoji_crvaegan_stage2_cpu")
  os.makedirs(out, exist_ok=True)
  lines = []
  for suffix, extra, what in STAGE2_VARIANTS:
    workdir = os.path.join(FLAGS.runs_dir, f"emoji_crvaegan_stage2{suffix}_cpu")
    args = ["--config=experiments/configs/stage2.py:emoji_crvaegan,cpu",
            f"--config.stage1.workdir={stage1}", *extra, f"--workdir={workdir}",
            "--mode=train,sample"]
    run_main(*args)
    with open(os.path.join(workdir, "train_summary.json"), encoding="utf-8") as f:
      train_seconds = json.load(f)["train_seconds"]
    scores_path = sorted(glob.glob(os.path.join(workdir, "samples",
                                                "stage2_vs_bicubic_*.json")))[-1]
    with open(scores_path, encoding="utf-8") as f:
      scores = json.load(f)
    names = {}
    for kind in ("prior", "reconstructions"):
      latest = sorted(glob.glob(os.path.join(workdir, "samples",
                                             f"stage2_{kind}_*.png")))[-1]
      names[kind] = f"stage2{suffix}_{kind}.png"
      shutil.copyfile(latest, os.path.join(out, names[kind]))
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      last = [r for r in map(json.loads, f) if r.get("split") == "train"][-1]
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
    lines += [
        f"## {what}", "",
        f"`python -m experiments.main {' '.join(args)}`", "",
        f"Training: {train_seconds / 60:.1f} min (`train_summary.json`, with compilation; "
        "other jobs may have shared the cores).", "",
        f"64 -> {config['model']['image_size']}, width {config['model']['width']}, "
        f"{last['step']} steps x batch {config['train']['batch_size']}, generator loss "
        f"{config['objective']['adversarial']}. The 128x128 targets are bicubic "
        "upscalings of the 64x64 emoji.", "",
        "Last logged step: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()
                                         if isinstance(v, float)), "",
        f"![prior]({names['prior']})", "",
        "Prior samples: Stage1 output (bicubic upscale) next to its Stage2 output.", "",
        f"![reconstructions]({names['reconstructions']})", "",
        "Fixed training images: real | Stage1 reconstruction (bicubic upscale) | Stage2 "
        "output.", "",
        f"Against the 128x128 truth of those {scores['images']} images (`"
        f"{os.path.basename(scores_path)}`; mean, and Stage2 minus bicubic with its "
        "paired standard error):", "",
        "| metric | Stage2 | bicubic upscale | difference |", "|---|---|---|---|"] + [
        f"| {m.upper()} | {scores[m]['stage2']:.3f} | {scores[m]['bicubic']:.3f} | "
        f"{scores[m]['difference']:+.3f} +- {scores[m]['difference_se']:.3f} |"
        for m in ("psnr", "ssim")] + [""]
  with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(header("Stage2 on the emoji crVAE-GAN, CPU scale",
                             "experiments/main.py, twice, below", commit) + [
        "What this shows: the code path (frozen Stage1 -> Stage2 -> grids, with and "
        "without the perceptual term) runs end to end at CPU scale, with no pretrained "
        "features. Whether Stage2 adds anything is measured against the bicubic "
        "upscale of the same Stage1 image (the tables below); the 128x128 targets are "
        "themselves bicubic upscalings of 64x64 drawings, so there is no real detail "
        "to recover and the bicubic upscale is a strong baseline.", ""]
        + lines))
  print(f"stage2: {out}/summary.md")


def completion_demo() -> None:
  """The held-out comparison (`experiments.completion_table`) of the two emoji runs."""
  workdirs = [os.path.join(FLAGS.runs_dir, f"emoji_{m}_cpu") for m in ("vaegan", "crvaegan")]
  out = os.path.join(FLAGS.results_dir, "emoji_completion.md")
  subprocess.run([sys.executable, "-m", "experiments.completion_table",
                  f"--workdirs={','.join(workdirs)}", f"--out={out}"], check=True, cwd=REPO)
  print(f"complete: {out}")


def main(argv):
  del argv
  unknown = set(FLAGS.parts) - {"stage2", "complete"}
  if unknown:
    raise app.UsageError(f"--parts: unknown {sorted(unknown)}; choose stage2, complete")
  if "stage2" in FLAGS.parts:
    stage2_demo()
  if "complete" in FLAGS.parts:
    completion_demo()


if __name__ == "__main__":
  app.run(main)
