"""Stage2 (64 -> 128 / 224): network shapes, the perceptual-weights guard, the step on 1 and
2 devices with a frozen Stage1, the non-finite skip, the perceptual term's effect on the
generator, and a tiny end-to-end run (Stage1 checkpoint -> Stage2 train, resume, sample)
through experiments.main."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import main_flags
from crvae_jax import config_checks
from crvae_jax.data.image_source import ArrayImages
from crvae_jax.models import perceptual
from crvae_jax.models.stage2 import Stage2Discriminator, Stage2Generator
from crvae_jax import sharding
from crvae_jax.families import stage1, stage2
from crvae_jax.train import checkpoints, stage2_step
from experiments import main as cli
from experiments.configs import stage2 as stage2_configs
from test_rgb_training import tiny_rgb_config, tiny_source


def tiny_stage2_config(stage1_workdir="", num_devices=2, steps=3):
  """The emoji CPU config at width 2, one residual block, batch 4, 128x128; XLA's own
  convolutions (at width 2 they compile faster than the CPU-tuned kernels)."""
  c = stage2_configs.get_config("emoji_crvaegan,cpu")
  c.model.conv_impl = "xla"
  c.stage1.workdir = stage1_workdir
  c.model.width = 2
  c.model.disc_width = 2
  c.model.num_res_blocks = 1
  c.train.num_devices = num_devices
  c.train.batch_size = 4
  c.train.num_steps = steps
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.sample_every_steps = 100  # grids only at the end
  c.sample.num_images = 4
  return c


def tiny_high_res_source(n=12, size=128):
  """tiny_source's blobs upscaled to size x size, uint8."""
  small = tiny_source(n).images
  return ArrayImages(np.stack([np.asarray(Image.fromarray(im).resize((size, size)))
                               for im in small]), "tiny blobs, upscaled")


@pytest.mark.parametrize("size,encode_to,upsample", [
    (128, 16, "nearest"), (128, 32, "deconv"), (224, 16, "nearest"), (224, 32, "deconv")])
def test_generator_and_discriminator_shapes(size, encode_to, upsample):
  gen = Stage2Generator(size, width=2, encode_to=encode_to, num_res_blocks=1,
                        upsample=upsample)
  x = jnp.zeros((3, 64, 64, 3))
  out = jax.eval_shape(lambda: gen.apply(gen.init(jax.random.key(0), x), x))
  assert out.shape == (3, size, size, 3)
  disc = Stage2Discriminator(size, width=2)
  s = jnp.zeros((3, size, size, 3))
  logits = jax.eval_shape(lambda: disc.apply(disc.init(jax.random.key(0), s), s))
  assert logits.shape == (3,)


def test_perceptual_term_without_weights_fails_early_naming_the_key(tmp_path):
  c = stage2_configs.get_config("celeba_crvaegan,cpu")
  assert c.objective.gamma == 1.0 and c.perceptual.weights == ""
  with pytest.raises(config_checks.ConfigError,
                     match=r"perceptual.weights=''.*experiments.convert_torchvision_weights"):
    config_checks.check_stage2_config(c, 1)
  c.perceptual.weights = str(tmp_path / "vgg11.npz")
  with pytest.raises(config_checks.ConfigError, match="perceptual.weights=.*no such file"):
    stage2.train(c, str(tmp_path / "run"))  # before any data, Stage1 or compile
  config_checks.check_stage2_config(c, 1, training=False)  # sampling needs no weights
  c.objective.gamma = 0.0
  config_checks.check_stage2_config(c, 1)
  c.model.image_size = 100
  with pytest.raises(config_checks.ConfigError, match="model.image_size=100"):
    config_checks.check_stage2_config(c, 1)


def _frozen_stage1():
  """A tiny random Stage1 crVAE-GAN generator: (model, variables)."""
  model = stage1.build(tiny_rgb_config("crvaegan"), axis_name=None).model
  eps = jnp.zeros((1,) + model.latent_shape)
  return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), eps, eps)


def _run_steps(num_devices, gamma=0.0, features=None, features_vars=None, steps=2):
  """(metrics of each step, final state, Stage1 variables before, after, (step_fn,
  frozen, device state, images) to go on) of `steps` Stage2 steps on 4 images."""
  config = tiny_stage2_config(num_devices=num_devices)
  stage1, s1_vars = _frozen_stage1()
  before = jax.device_get(s1_vars)
  mesh = sharding.make_mesh(num_devices)
  parts = stage2.build(config)
  step_fn = stage2_step.make_stage2_step(
      stage1=stage1, gen=parts.gen, disc=parts.disc, g_tx=parts.g_tx, d_tx=parts.d_tx,
      mesh=mesh, gamma=gamma, features=features)
  state = sharding.replicate(mesh, stage2.init_state(config))
  frozen = sharding.replicate(mesh, {"stage1": s1_vars, "perceptual": features_vars or {}})
  images = tiny_high_res_source(4).load(range(4))
  history = []
  for _ in range(steps):
    state, metrics = step_fn(state, frozen, sharding.shard_batch(mesh, images),
                             jax.random.key(0))
    history.append(jax.device_get(metrics))
  return history, jax.device_get(state), before, jax.device_get(frozen["stage1"]), (
      step_fn, frozen, state, sharding.shard_batch(mesh, images))


def _changed(a, b):
  return any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b)))


@pytest.fixture(scope="module")
def one_device_run():
  return _run_steps(1)


def test_step_on_one_and_two_devices_agrees_and_leaves_stage1_frozen(one_device_run):
  one, _, before, after, _ = one_device_run
  two, state2, _, after2, _ = _run_steps(2)
  for key in ("loss_g", "loss_d", "d_accuracy", "l1_post"):
    np.testing.assert_allclose(one[0][key], two[0][key], rtol=1e-5, err_msg=key)
  # (At init Stage1's outputs are nearly constant, so BN makes the gradients sensitive to
  # rounding: the devices' different reduction order moves them by ~1e-5.)
  for key in ("grad_norm_g", "grad_norm_d"):
    np.testing.assert_allclose(one[0][key], two[0][key], rtol=1e-3, err_msg=key)
  assert all(m["skipped"] == 0 and np.isfinite(m["loss_g"]) for m in one + two)
  assert int(state2.step) == 2
  init = jax.device_get(stage2.init_state(tiny_stage2_config()))
  assert _changed(init.gen["params"], state2.gen["params"])
  assert _changed(init.disc["params"], state2.disc["params"])
  assert _changed(init.gen["batch_stats"], state2.gen["batch_stats"])
  for frozen_after in (after, after2):  # Stage1 bit-identical after the Stage2 steps
    jax.tree.map(np.testing.assert_array_equal, before, frozen_after)


def test_a_non_finite_step_is_skipped(one_device_run):
  """NaN images: the step is counted, nothing else in the state moves."""
  step_fn, frozen, state, images = one_device_run[4]
  before = jax.device_get(state)
  state, metrics = step_fn(state, frozen, images * np.nan, jax.random.key(0))
  after = jax.device_get(state)
  assert float(metrics["skipped"]) == 1.0 and int(after.step) == int(before.step) + 1
  for field in ("gen", "disc", "g_opt", "d_opt"):
    jax.tree.map(np.testing.assert_array_equal, getattr(before, field), getattr(after, field))


def test_perceptual_term_changes_the_generator_gradient(one_device_run):
  """gamma = 100 on a random VGG11 (cut at relu2_1 to keep it cheap): the generator's
  gradient changes, the discriminator's does not."""
  features, variables = perceptual.init_random("vgg11", jax.random.key(3), image_size=128,
                                               layer="relu2_1")
  without, state0, _, _, _ = one_device_run
  with_term, state1, _, _, _ = _run_steps(1, gamma=100.0, features=features,
                                          features_vars=variables)
  first, base = with_term[0], without[0]
  assert base["perceptual"] == 0 and first["perceptual"] > 0
  assert first["loss_g"] == pytest.approx(first["adv"] + 100 * first["perceptual"], rel=1e-5)
  assert first["adv"] == pytest.approx(base["adv"], rel=1e-5)
  assert abs(first["grad_norm_g"] / base["grad_norm_g"] - 1) > 0.01
  assert first["grad_norm_d"] == pytest.approx(base["grad_norm_d"], rel=1e-5)
  assert _changed(state0.gen["params"], state1.gen["params"])


def test_stage2_trains_resumes_and_samples_from_a_stage1_checkpoint(tmp_path, absl_logs):
  # A Stage1 run directory as stage1.train leaves it (config.json, an Orbax checkpoint
  # of the whole GanState at step 2), written with the same functions; the Stage1 loop
  # itself is tested in test_rgb_training.py (compiling its step here too would be slow).
  stage1_dir = tmp_path / "stage1"
  s1_config = tiny_rgb_config("crvaegan", num_devices=1, steps=2)
  s1_before = jax.device_get(stage1.init_state(s1_config))
  checkpoints.write_config(str(stage1_dir), s1_config)
  s1_ckpts = checkpoints.Checkpoints(str(stage1_dir), best=False)
  s1_ckpts.save_latest(2, s1_before)
  s1_ckpts.wait()
  s1_ckpts.close()

  folder = tmp_path / "images"  # main.py reads a folder of 128x128 PNGs
  folder.mkdir()
  for i, image in enumerate(tiny_high_res_source().images):
    Image.fromarray(image).save(folder / f"{i:02d}.png")
  config = tiny_stage2_config(str(stage1_dir), num_devices=2, steps=2)
  config.data.source, config.data.image_dir = "folder", str(folder)
  workdir = tmp_path / "stage2"
  arg = "experiments/configs/stage2.py:emoji_crvaegan,cpu"
  with main_flags(arg, workdir, "train", config):
    cli.main(["main"])  # steps 0-1, checkpoint at 2
  # The Stage1 config travelled with the run: Stage2 needs nothing from Stage1's
  # config.json any more (and never loads a config script).
  assert json.loads((workdir / "stage1_config.json").read_text())["model"] == \
      json.loads((stage1_dir / "config.json").read_text())["model"]
  # Stage1's checkpoint is untouched; the Stage2 run pinned its step and copied it.
  s1_ckpts = checkpoints.Checkpoints(str(stage1_dir), best=False)
  s1_after, step = s1_ckpts.restore(stage1.init_state(s1_config, abstract=True))
  s1_ckpts.close()
  assert step == 2 and json.loads((workdir / "stage1.json").read_text())["step"] == 2
  jax.tree.map(np.testing.assert_array_equal, s1_before.gen, jax.device_get(s1_after.gen))
  _, frozen, _ = stage2.restore_stage1(config, str(workdir))
  jax.tree.map(np.testing.assert_array_equal, stage1.generator_variables(s1_before),
               jax.device_get(frozen))
  # Stage1 trains on and rotates that step away (here: all of Stage1 is gone): the
  # Stage2 run resumes and samples from its own copy.
  shutil.rmtree(stage1_dir)
  absl_logs.clear()
  absl_logs.set_level("INFO", logger="absl")  # unparsing main's flags reset the verbosity
  config.train.num_steps = 3
  summary = stage2.train(config, str(workdir), source=tiny_high_res_source())
  assert any("Resuming from step 2" in line for line in absl_logs.messages)
  assert summary["stage1_step"] == 2 and summary["skipped_steps"] == 0
  assert np.isfinite(summary["loss_g"]) and np.isfinite(summary["loss_d"])
  with main_flags(arg, workdir, "sample", config):
    cli.main(["main"])

  samples = workdir / "samples"
  assert Image.open(samples / "stage2_prior_0000003.png").size == (4 * 130 + 2, 2 * 130 + 2)
  scores = json.loads((samples / "stage2_vs_bicubic_0000003.json").read_text())
  assert set(scores) == {"images", "psnr", "ssim"} and np.isfinite(scores["psnr"]["stage2"])
  prior = Image.open(samples / "stage2_prior_sampled_0000003.png")
  recon = Image.open(samples / "stage2_reconstructions_sampled_0000003.png")
  assert prior.size == (4 * 130 + 2, 2 * 130 + 2)  # 2 (Stage1 | Stage2) pairs per row
  assert recon.size == (6 * 130 + 2, 2 * 130 + 2)  # (real | Stage1 | Stage2) triples
  # A damaged copy is refused, naming the file.
  frozen_path = workdir / stage2.FROZEN_FILE
  data = bytearray(frozen_path.read_bytes())
  data[len(data) // 2] ^= 1
  frozen_path.write_bytes(bytes(data))
  with pytest.raises(checkpoints.CheckpointDamagedError, match="stage1_frozen.msgpack"):
    stage2.restore_stage1(config, str(workdir))


def test_stage2_configs():
  for row in stage2_configs.ROWS:
    paper, cpu = stage2_configs.get_config(row), stage2_configs.get_config(row + ",cpu")
    assert paper.family == "stage2" and cpu.model.width < paper.model.width
    assert paper.model.image_size == (224 if row.startswith("lsun") else 128)
    assert paper.optim.learning_rate == 2e-4
    assert paper.objective.adversarial == ("non_saturating" if row.startswith("emoji")
                                           else "saturating")
  c = stage2_configs.get_config("lsun_crvaegan")
  assert (c.perceptual.network, c.objective.gamma, c.data.load_size) == ("resnet50", 10.0, 252)
  c = stage2_configs.get_config("celeba_vaegan")
  assert (c.model.encode_to, c.model.upsample, c.perceptual.network) == (32, "deconv", "vgg11")
  c = stage2_configs.get_config("emoji_crvaegan,cpu")
  assert c.objective.gamma == 0 and c.stage1.workdir == "runs/emoji_crvaegan_cpu"


def test_a_resumed_stage2_run_refuses_another_stage1_than_its_pin(tmp_path):
  from crvae_jax.families import stage2 as stage2_family  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "stage2"
  workdir.mkdir()
  (workdir / stage2_family.PIN_FILE).write_text(
      json.dumps({"workdir": str(tmp_path / "stage1_a"), "step": 5}))
  c = stage2_configs.get_config("emoji_crvaegan,cpu")
  c.stage1.workdir = str(tmp_path / "stage1_b")
  with pytest.raises(config_checks.ConfigError, match="is not the Stage1 run this Stage2"):
    stage2_family.restore_stage1(c, str(workdir))
  c.stage1.workdir, c.stage1.checkpoint_step = str(tmp_path / "stage1_a"), 7
  with pytest.raises(config_checks.ConfigError, match="checkpoint_step=7 differs from"):
    stage2_family.restore_stage1(c, str(workdir))


def test_bicubic_upscale_is_the_baseline_beside_stage2():
  from crvae_jax.families import stage2 as stage2_family
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  up = stage2_family.bicubic_upscale(x, 16)
  assert up.shape == (2, 16, 16, 3) and up.min() >= 0.0 and up.max() <= 1.0
  flat = stage2_family.bicubic_upscale(np.full((1, 8, 8, 3), 0.25, np.float32), 16)
  np.testing.assert_allclose(flat, 0.25, atol=1e-6)  # a constant image stays constant
  nearest = x.repeat(2, axis=1).repeat(2, axis=2)
  assert np.abs(up - nearest).max() > 1e-2  # interpolated, not repeated pixels
  # Downsampling the upscale by averaging 2x2 blocks returns close to the input.
  back = up.reshape(2, 8, 2, 8, 2, 3).mean(axis=(2, 4))
  assert np.abs(back - x).mean() < 0.1


def test_stage2_is_scored_against_the_bicubic_upscale_beside_it():
  from crvae_jax.families import stage2 as stage2_family
  rng = np.random.default_rng(1)
  truth = rng.uniform(-1, 1, size=(4, 16, 16, 3))
  noisy = np.clip(truth + 0.3 * rng.normal(size=truth.shape), -1, 1)
  r = stage2_family.versus_bicubic(truth, bicubic=noisy, stage2=truth * 0.99)
  assert r["images"] == 4
  assert r["psnr"]["stage2"] > r["psnr"]["bicubic"] and r["psnr"]["difference"] > 0
  assert r["ssim"]["stage2"] > r["ssim"]["bicubic"]
  swapped = stage2_family.versus_bicubic(truth, bicubic=truth * 0.99, stage2=noisy)
  assert swapped["psnr"]["difference"] == pytest.approx(-r["psnr"]["difference"])
  assert r["psnr"]["difference_se"] > 0


def test_stage2_refuses_other_data_than_its_stage1_learned_from(tmp_path):
  from experiments.configs import rgb as rgb_configs  # pylint: disable=g-import-not-at-top
  stage1_dir = tmp_path / "stage1"
  checkpoints.write_config(str(stage1_dir), rgb_configs.get_config("emoji_crvaegan,cpu"))
  c = stage2_configs.get_config("emoji_crvaegan,cpu")
  c.stage1.workdir = str(stage1_dir)
  assert stage2.data_differences(c, stage2.stage1_config(c, str(tmp_path / "s2"))) == []
  with pytest.raises(FileNotFoundError, match="stage1"):  # data agree: on to the checkpoint
    stage2.restore_stage1(c, str(tmp_path / "s2"))
  c.data.emoji_categories = ""
  c.data.emoji_sets = "google"
  with pytest.raises(config_checks.ConfigError, match=r"other data than the Stage1.*"
                     r"emoji_sets: 'google' \(Stage2\) != 'google,twitter' \(Stage1\); "
                     r"data.emoji_categories: '' \(Stage2\) != 'Smileys & Emotion'"):
    stage2.restore_stage1(c, str(tmp_path / "s2"))
  # Spacing, case and order aside, the same sets and categories agree.
  c.data.emoji_sets, c.data.emoji_categories = " twitter, google", "smileys & emotion"
  assert stage2.data_differences(c, stage2.stage1_config(c, str(tmp_path / "s2"))) == []
  # A folder may hold the same images as the dataset Stage1 read: not compared.
  c.data.source = "folder"
  assert stage2.data_differences(c, stage2.stage1_config(c, str(tmp_path / "s2"))) == []
  # tfds: the dataset's name.
  c.data.source, c.data.tfds_name = "tfds", "celeb_a"
  s1 = stage2.stage1_config(c, str(tmp_path / "s2")).copy_and_resolve_references()
  s1.data.source, s1.data.tfds_name = "tfds", "lsun/bedroom"
  assert stage2.data_differences(c, s1) == [
      "data.tfds_name: 'celeb_a' (Stage2) != 'lsun/bedroom' (Stage1)"]
