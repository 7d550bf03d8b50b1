"""experiments/completion_table.py: two tiny Stage1 runs complete the same held-out images
and decode the same prior z; the table's means, standard errors and paired differences
are those of the per-image JSON beside it; one run alone gets a table without paired
columns; bad input is refused, naming what is wrong, before anything compiles."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from crvae_jax import image_metrics
from crvae_jax.families import stage1
from crvae_jax.train import checkpoints
from experiments import completion_table as table
from test_completion import _calibrated_generator, _tiny_run
from test_rgb_training import tiny_rgb_config, tiny_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Tiny VAE-GAN and crVAE-GAN checkpoints (step 0) with their config.json: random
  weights, BatchNorm averages set from real batches, so that their images vary with z
  and the two models complete an image differently (training them costs a minute)."""
  root = tmp_path_factory.mktemp("table_runs")
  for variant in ("vaegan", "crvaegan"):
    config = tiny_rgb_config(variant)
    state = stage1.init_state(config)
    _, gen = _calibrated_generator(config, state, stage1.fixed_images(tiny_source(), 8, 0))
    _tiny_run(root / variant, variant, state.replace(gen=gen))
  return [str(root / "vaegan"), str(root / "crvaegan")]


def _cells(markdown: str, first_cells: str) -> list:
  """The cells after `first_cells` of the table row that starts with it."""
  row = next(line for line in markdown.splitlines() if line.startswith(f"| {first_cells} |"))
  return [c.strip() for c in row.split("|")[1:-1]][len(first_cells.split(" | ")):]


def _mean_se(values, digits: int, sign: str = "") -> str:
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / np.sqrt(len(values))
  return f"{values.mean():{sign}.{digits}f} ± {se:.{digits}f}"


def test_table_is_the_paired_statistics_of_the_per_image_json(runs, tmp_path):
  configs, kinds = table.check_runs(runs, "center,random_blocks")
  out = tmp_path / "results" / "completion.md"
  record = table.run(runs, configs, kinds, num_images=4, seed=1, steps=2, out=str(out),
                     grid_images=2, num_devices=1, command="test", source=tiny_source(n=9),
                     num_prior_samples=10, reference_images=6,
                     train_source=tiny_source(n=8, seed=1))
  with open(out, encoding="utf-8") as f:
    markdown = f.read()
  with open(tmp_path / "results" / "completion.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["completion"] == record["completion"] and list(saved["models"]) == [
      "vaegan", "crvaegan"]
  assert saved["settings"]["num_images"] == 4 and saved["settings"]["split_size"] == 9
  assert saved["reconstruction"]["num_images"] == 9  # the whole held-out split
  machine = saved["provenance"]["machine"]
  assert "cores, cores" not in machine and machine.count(" cores") == 1, machine
  for kind in kinds:
    per = saved["completion"][kind]
    for metric, name, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
      a, b = (np.asarray(per[m][metric]) for m in ("vaegan", "crvaegan"))
      assert a.shape == (4,) and np.all(np.isfinite(a)) and np.any(a != b)
      hidden = f"{saved['hidden_fraction'][kind]:.0%}"
      assert _cells(markdown, f"{kind} | {hidden} | {name}") == [
          _mean_se(a, digits), _mean_se(b, digits), _mean_se(b - a, digits, "+")]
  rec = saved["reconstruction"]["models"]
  for metric, name, digits in (("mse", "MSE", 5), ("psnr", "PSNR (dB)", 2)):
    a, b = (np.asarray(rec[m][f"{metric}_per_image"]) for m in ("vaegan", "crvaegan"))
    assert a.shape == (9,)
    assert _cells(markdown, name) == [_mean_se(a, digits), _mean_se(b, digits),
                                      _mean_se(b - a, digits, "+")]
  # Prior samples: the same statistics of the per-sample scores in the JSON, against 6 of
  # the 8 training images; the held-out images' scores are the scale: 10 samples, more
  # than the split, so the whole split (the reconstruction's images, loaded once).
  prior = saved["prior"]
  held = np.asarray(prior["held_out"]["ssim_per_image"])
  references = stage1.fixed_images(tiny_source(n=8, seed=1), 6, 1)
  np.testing.assert_allclose(held, image_metrics.most_similar(
      stage1.fixed_images(tiny_source(n=9), 9, 1), references)[0], rtol=1e-6)
  assert held.shape == (9,) and prior["num_references"] == 6
  a, b = (np.asarray(prior["models"][m]["ssim_per_sample"]) for m in ("vaegan", "crvaegan"))
  assert a.shape == (10,) and np.all((a > -1) & (a < 1)) and np.any(a != b)
  assert _cells(markdown, "SSIM with the most similar training image") == [
      _mean_se(a, 3), _mean_se(b, 3), _mean_se(b - a, 3, "+")]
  assert _cells(markdown, "median") == [f"{np.median(a):.3f}", f"{np.median(b):.3f}", ""]
  assert _cells(markdown, "share at or above the held-out median") == [
      f"{np.mean(v >= np.median(held)):.0%}" for v in (a, b)] + [""]
  assert f"the 9 held-out images score {_mean_se(held, 3)} (median" in markdown
  pairs = Image.open(tmp_path / "results" / "completion_prior.png")
  assert pairs.size == (2 * 8 * 66 + 2, 2 * 66 + 2)  # a row per run: 8 (sample, best)
  for line in ("Command: `test`", "Commit: ", "Machine: ", "Images: 4 of the 9 images",
               "](completion_prior.png)"):
    assert line in markdown
  # One run alone: the same report without paired columns, each table's rows as wide as
  # its header.
  one = json.loads(json.dumps(saved))
  for part in (one["models"], one["prior"]["models"], one["reconstruction"]["models"],
               *one["completion"].values()):
    del part["crvaegan"]
  alone = table.format_report(one)
  assert "minus" not in alone and "paired" not in alone
  assert _cells(alone, "SSIM with the most similar training image") == [_mean_se(a, 3)]
  assert _cells(alone, "share at or above the held-out median") == [
      f"{np.mean(a >= np.median(held)):.0%}"]
  for block in alone.split("\n\n"):
    widths = {row.count("|") for row in block.splitlines() if row.startswith("|")}
    assert len(widths) <= 1, block
  assert "| vaegan | " in markdown and "| yes |" in markdown  # held out for both
  # The grid: 2 images x (original, masked, 2 runs) rows, a column per mask, unscaled.
  grid = Image.open(tmp_path / "results" / "completion.png")
  assert grid.size == (2 * 66 + 2, 2 * 4 * 66 + 2)
  assert os.path.getsize(tmp_path / "results" / "completion.png") < 200_000
  # Rows 0 and 1 of the first image: the original, and it masked in the centre.
  pixels = np.asarray(grid, np.float32) / 255
  x = stage1.fixed_images(tiny_source(n=9), 4, 1)
  np.testing.assert_allclose(pixels[2:66, 2:66], (x[0] + 1) / 2, atol=1 / 255)
  hidden = pixels[66 + 2 + 24:66 + 2 + 40, 2 + 24:2 + 40]  # x * m = 0: mid-grey
  np.testing.assert_allclose(hidden, 0.5, atol=1 / 255)


def _write_run(path, config, checkpoint_state=None):
  os.makedirs(path, exist_ok=True)
  checkpoints.write_config(str(path), config)
  if checkpoint_state is not None:
    ckpts = checkpoints.Checkpoints(str(path), best=False)
    ckpts.save_latest(0, checkpoint_state)
    ckpts.wait()
    ckpts.close()
  return str(path)


def test_prior_scale_is_capped_at_the_samples_and_reuses_the_held_out_set():
  source = tiny_source(n=9)
  held_out = stage1.fixed_images(source, 9, 1)  # the whole split
  assert table.prior_scale(source, held_out, 10, 1) is held_out
  fewer = table.prior_scale(source, held_out, 5, 1)  # as many as the samples
  np.testing.assert_array_equal(fewer, stage1.fixed_images(source, 5, 1))
  assert fewer.shape[0] == 5


def test_bad_input_is_refused_before_compilation(runs, tmp_path, monkeypatch):
  from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top
  from crvae_jax import completion  # pylint: disable=g-import-not-at-top
  compiled = []
  monkeypatch.setattr(completion, "make_completion_fn",
                      lambda *a, **k: compiled.append(1))
  check = lambda workdirs, masks="center": table.check_runs(workdirs, masks)
  with pytest.raises(table.BadInput, match="one or more distinct"):
    check([])
  with pytest.raises(table.BadInput, match="one or more distinct"):
    check([runs[0], runs[0] + "/"])
  assert check(runs[:1])[1] == ("center",)  # one run alone: scored, nothing paired
  assert len(check([runs[0], runs[0] + "@0"])[0]) == 2  # one run at two of its steps
  with pytest.raises(table.BadInput, match="one or more distinct"):
    check([runs[0] + "@0", runs[0] + "/@0"])
  with pytest.raises(table.BadInput, match="vaegan@x: the part after '@' must be a step"):
    check([runs[0] + "@x"])
  with pytest.raises(table.BadInput, match=r"vaegan@7: no checkpoint of step 7 \(kept: \[0\]\)"):
    check([runs[1], runs[0] + "@7"])
  fresh = _write_run(tmp_path / "fresh", tiny_rgb_config("vaegan"))  # no checkpoints yet
  with pytest.raises(table.BadInput, match=r"fresh@2: no checkpoint of step 2 \(kept: \[\]\)"):
    check([fresh + "@2"])
  with pytest.raises(table.BadInput, match="--masks: 'center,middle': give distinct kinds"):
    check(runs, "center,middle")
  with pytest.raises(table.BadInput, match="no such workdir: .*nowhere"):
    check([runs[0], str(tmp_path / "nowhere")])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(table.BadInput, match="empty.config.json does not exist"):
    check([runs[0], str(tmp_path / "empty")])
  mnist = _write_run(tmp_path / "mnist", make_tiny_config())
  with pytest.raises(table.BadInput, match="holds a mnist run; completion needs a 64x64"):
    check([runs[0], mnist])
  bigger = tiny_rgb_config("crvaegan")
  bigger.data.load_size, bigger.data.random_crop = 72, True
  with pytest.raises(table.BadInput, match="differ in load_size 64 != 72: a paired"):
    check([runs[0], _write_run(tmp_path / "load72", bigger)])
  other = tiny_rgb_config("crvaegan")
  other.data.emoji_sets = "twitter"
  with pytest.raises(table.BadInput, match="differ in emoji_sets 'google,twitter' != 'twitter'"):
    check([runs[0], _write_run(tmp_path / "twitter", other)])
  animals = tiny_rgb_config("crvaegan")
  animals.data.emoji_categories = "Animals & Nature"
  with pytest.raises(table.BadInput, match="differ in emoji_categories 'Smileys & Emotion' "
                     "!= 'Animals & Nature': a paired"):
    check([runs[0], _write_run(tmp_path / "animals", animals)])

  configs, kinds = check(runs)
  kwargs = dict(seed=0, steps=2, out=str(tmp_path / "t.md"), num_devices=1)
  with pytest.raises(table.BadInput, match="--num_images=6 is more than the 5 images of "
                     "the held-out split"):
    table.run(runs, configs, kinds, num_images=6, source=tiny_source(n=5), **kwargs)
  everything = tiny_rgb_config("vaegan")
  everything.data.emoji_split = "all"
  all_run = _write_run(tmp_path / "all", everything)
  configs_all, _ = check([all_run, runs[1]])
  with pytest.raises(table.BadInput, match="all: the images to complete are in its "
                     "training data .data.emoji_split='all'.*--allow_training_images"):
    table.run([all_run, runs[1]], configs_all, kinds, num_images=2,
              source=tiny_source(n=5), **kwargs)
  no_checkpoint = _write_run(tmp_path / "untrained", tiny_rgb_config("crvaegan"))
  configs_nc, _ = check([runs[0], no_checkpoint])
  with pytest.raises(FileNotFoundError, match="no 'latest' checkpoint in .*untrained"):
    table.run([runs[0], no_checkpoint], configs_nc, kinds, num_images=2,
              source=tiny_source(n=5), **kwargs)
  with pytest.raises(ValueError, match="config.completion.steps=0 is invalid"):
    table.run(runs, configs, kinds, num_images=2, source=tiny_source(n=5),
              **dict(kwargs, steps=0))
  for flag, value, message in (("num_prior_samples", -1, "--prior_samples=-1: must be >= 0"),
                               ("reference_images", 0, "--reference_images=0: must be >= 1"),
                               ("grid_images", -2, "--grid_images=-2: must be >= 0")):
    with pytest.raises(table.BadInput, match=message):
      table.run(runs, configs, kinds, num_images=2, source=tiny_source(n=5),
                **dict(kwargs, **{flag: value}))
  assert not compiled and not os.path.exists(tmp_path / "t.md")


def test_command_line_errors_are_one_line(runs):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.completion_table",
       f"--workdirs={runs[0]},{runs[0]}", "--masks=center"], cwd=REPO, capture_output=True,
      text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert re.fullmatch(r"error: --workdirs: give one or more distinct Stage1 workdirs, "
                      r"got \['.*vaegan', '.*vaegan'\]", lines[-1]), proc.stderr[-2000:]
  assert "Held-out completion" not in proc.stderr  # no usage text
