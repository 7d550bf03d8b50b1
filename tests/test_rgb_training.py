"""VAE-GAN / crVAE-GAN end to end: a few training steps of each model on 1 and 2 devices
through `stage1.train`, the gate inside real runs, checkpoints that restore (exact
resume, `sample`), and `experiments.main` on a folder of PNGs."""

import json
import os

import jax
import numpy as np
import pytest
from absl import app
from PIL import Image

from conftest import main_flags
from crvae_jax.data.image_source import ArrayImages
from crvae_jax.families import stage1
from crvae_jax.train import checkpoints
from experiments import main as cli
from experiments.configs import rgb as rgb_configs


def tiny_rgb_config(variant="crvaegan", num_devices=2, max_d_accuracy=0.9, steps=3):
  """The CPU config shrunk to seconds per step: width 2, T=4, latent 4x4x8, batch 8."""
  c = rgb_configs.get_config(f"emoji_{variant},cpu")
  c.model.width = 2
  c.model.lstm_hidden = 8
  c.model.latent_channels = 8
  c.model.num_blocks = 4
  c.model.disc_hidden = 8
  c.model.minibatch_kernels = 4
  c.model.minibatch_kernel_dim = 2
  c.objective.max_d_accuracy = max_d_accuracy
  c.train.num_devices = num_devices
  c.train.batch_size = 8
  c.train.num_steps = steps
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.keep_checkpoint_every_steps = 0  # the emoji row keeps every 4,000th
  c.train.sample_every_steps = 100  # grids only at the end
  c.sample.num_images = 4
  return c


def tiny_source(n=24, seed=0):
  """Smooth coloured blobs, uint8 [n, 64, 64, 3]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:64, :64]
  cy, cx = rng.uniform(16, 48, (2, n, 1, 1))
  blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 120.0)[..., None]  # [n, 64, 64, 1]
  colour = rng.uniform(0, 1, (n, 1, 1, 3))
  return ArrayImages((255 * (1 - blob + blob * colour)).astype(np.uint8), "tiny blobs")


def _restore(config, workdir):
  ckpts = checkpoints.Checkpoints(str(workdir), best=False)
  state, step = ckpts.restore(stage1.init_state(config, abstract=True))
  ckpts.close()
  return jax.device_get(state), step


def _changed(a, b):
  return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b)))


def _logged(workdir, key):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r[key] for r in map(json.loads, f) if r["split"] == "train"]


def test_crvaegan_two_devices_gate_closed_resumes_exactly_and_samples(tmp_path, absl_logs):
  config = tiny_rgb_config("crvaegan", num_devices=2, max_d_accuracy=-1.0, steps=4)
  source = tiny_source()
  first = jax.device_get(stage1.init_state(config))
  summary = stage1.train(config, str(tmp_path / "straight"), source=source)
  # Interrupted at step 2 (its checkpoint), then resumed to step 4.
  config.train.num_steps = 2
  stage1.train(config, str(tmp_path / "resumed"), source=source)
  config.train.num_steps = 4
  absl_logs.clear()
  stage1.train(config, str(tmp_path / "resumed"), source=source)
  assert any("Resuming from step 2" in line for line in absl_logs.messages)

  straight, step = _restore(config, tmp_path / "straight")
  resumed, _ = _restore(config, tmp_path / "resumed")
  assert step == 4 and int(straight.step) == 4
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)  # bit-identical
  # The gate was closed at every step: discriminator and its Adam state untouched.
  assert _logged(tmp_path / "straight", "d_update_skipped") == [1.0] * 4
  assert summary["d_update_skipped_fraction"] == 1.0 and summary["skipped_steps"] == 0
  jax.tree.map(np.testing.assert_array_equal, first.disc, straight.disc)
  jax.tree.map(np.testing.assert_array_equal, first.d_opt.inner_state,
               straight.d_opt.inner_state)
  assert int(straight.d_opt.step) == 4  # the wrapper counts every call
  assert _changed(first.gen["params"], straight.gen["params"])
  assert _changed(first.mi["params"], straight.mi["params"])  # trained with G

  prior, recon = stage1.sample(config, str(tmp_path / "straight"), source=source)
  assert Image.open(prior).size == (2 * 66 + 2, 2 * 66 + 2)  # 2x2 grid of 64 + pad 2
  assert Image.open(recon).size == (4 * 66 + 2, 2 * 66 + 2)  # pairs side by side
  assert os.path.exists(tmp_path / "straight" / "samples" / "prior_0000004.png")


def _check_trained(config, workdir, first, summary):
  """Finite metrics, a checkpoint at the last step that restores, a generator that
  moved, a discriminator that moved exactly when the gate was open, grids from `sample`."""
  assert all(np.isfinite(v) for v in summary.values()), summary
  state, step = _restore(config, workdir)
  assert step == config.train.num_steps
  assert _changed(first.gen["params"], state.gen["params"])
  gate_open = config.objective.max_d_accuracy >= 1.0
  assert summary["d_update_skipped_fraction"] == (0.0 if gate_open else 1.0)
  assert _changed(first.disc["params"], state.disc["params"]) == gate_open
  if config.model.variant == "vaegan":
    assert state.mi == {}  # no MI head without the generation LSTM
  else:
    assert _changed(first.mi["params"], state.mi["params"])
  paths = stage1.sample(config, str(workdir), source=tiny_source())
  assert all(os.path.exists(p) for p in paths)


@pytest.mark.parametrize("num_devices,max_d_accuracy", [(1, 1.0), (2, -1.0)])
def test_vaegan_trains_on_one_and_two_devices_and_restores(tmp_path, num_devices,
                                                           max_d_accuracy):
  config = tiny_rgb_config("vaegan", num_devices, max_d_accuracy, steps=3)
  first = jax.device_get(stage1.init_state(config))
  summary = stage1.train(config, str(tmp_path), source=tiny_source())
  _check_trained(config, tmp_path, first, summary)


def test_main_trains_crvaegan_on_one_device_from_a_folder_of_pngs(tmp_path):
  """(The 2-device crVAE-GAN run is the first test.)"""
  folder = tmp_path / "images"
  folder.mkdir()
  for i, image in enumerate(tiny_source().images):
    Image.fromarray(image).save(folder / f"{i:02d}.png")
  config = tiny_rgb_config("crvaegan", num_devices=1, max_d_accuracy=1.0, steps=3)
  config.data.source, config.data.image_dir = "folder", str(folder)
  first = jax.device_get(stage1.init_state(config))
  workdir = tmp_path / "run"
  with main_flags("experiments/configs/rgb.py:emoji_crvaegan,cpu", workdir, "train,sample",
                  config) as parsed:
    cli.main(["main"])
    assert os.path.exists(workdir / "samples" / "prior_sampled_0000003.png")
    assert os.path.exists(workdir / "samples" / "reconstructions_sampled_0000003.png")
    with open(workdir / "train_summary.json", encoding="utf-8") as f:
      _check_trained(config, workdir, first, json.load(f))
    parsed.mode = ["evaluate"]
    with pytest.raises(app.UsageError, match="MNIST configs only"):
      cli.main(["main"])


def test_rgb_configs_have_the_papers_weights_and_a_cpu_variant():
  c = rgb_configs.get_config("celeba_crvaegan")
  assert (c.objective.alpha1, c.objective.alpha2, c.objective.beta, c.objective.kappa,
          c.optim.learning_rate) == (3e-4, 2e-4, 0.01, 0.01, 1e-3)
  c = rgb_configs.get_config("lsun_vaegan")
  assert (c.objective.alpha1, c.objective.beta, c.optim.learning_rate) == (2e-4, 0.025, 3e-4)
  assert c.data.random_crop and c.data.flip and c.data.load_size > 64
  for row in rgb_configs.ROWS:
    paper, cpu = rgb_configs.get_config(row), rgb_configs.get_config(row + ",cpu")
    assert paper.model.width == 32 and paper.model.latent_channels == 64
    assert cpu.model.width < paper.model.width and cpu.scale == "cpu"
    assert paper.objective.kappa == 0 or paper.model.variant == "crvaegan"
  with pytest.raises(ValueError, match="unknown RGB config row 'celeba_cvaegan'"):
    rgb_configs.get_config("celeba_cvaegan")


def test_impossible_rgb_configs_name_the_key():
  # pylint: disable-next=g-import-not-at-top
  from crvae_jax.config_checks import ConfigError, check_rgb_config
  c = tiny_rgb_config()
  c.train.batch_size = 6
  with pytest.raises(ConfigError, match=r"train.batch_size=6 .*multiple of 2 x 2 device"):
    check_rgb_config(c, 2)
  c = tiny_rgb_config("vaegan")
  c.objective.kappa = 0.01
  with pytest.raises(ConfigError, match="objective.kappa=0.01 .*crVAE-GAN only"):
    check_rgb_config(c, 1)
  c = tiny_rgb_config()
  c.data.source, c.data.image_dir = "folder", ""
  with pytest.raises(ConfigError, match="data.image_dir"):
    check_rgb_config(c, 1)
  c = tiny_rgb_config()
  c.data.load_size = 72
  with pytest.raises(ConfigError, match="data.load_size=72 .*random_crop"):
    check_rgb_config(c, 1)
