"""Image completion (docs/objectives.md, O11): masks, PSNR / SSIM over the hidden pixels,
the optimisation of z on a tiny model whose targets it can reach (1 and 2 devices give
each image the same completion), and `complete` / `--mode=complete` end to end from tiny
checkpoints of a VAE-GAN and a crVAE-GAN."""

import json
import os

import jax
import numpy as np
import pytest
from absl import app
from PIL import Image

from conftest import main_flags, make_tiny_config
from crvae_jax import completion, image_metrics
from crvae_jax import sharding
from crvae_jax.families import stage1
from crvae_jax.train import checkpoints
from experiments import main as cli
from test_rgb_training import tiny_rgb_config, tiny_source


def test_masks_hide_the_named_part_and_random_blocks_are_seeded():
  visible = {"center": 0.75, "left": 0.5, "right": 0.5, "top": 0.5, "bottom": 0.5}
  for kind, fraction in visible.items():
    m = completion.make_masks(kind, 2)
    assert m.shape == (2, 64, 64, 1) and set(np.unique(m)) == {0.0, 1.0}
    assert m.mean() == fraction, kind
  assert completion.make_masks("center", 1)[0, 32, 32, 0] == 0  # the centre is hidden
  assert completion.make_masks("center", 1)[0, 15, 32, 0] == 1
  assert completion.make_masks("left", 1)[0, :, :32].sum() == 0
  assert completion.make_masks("top", 1)[0, 32:].min() == 1
  blocks = completion.make_masks("random_blocks", 4, seed=3)
  assert np.all((blocks.mean((1, 2, 3)) > 0.5) & (blocks.mean((1, 2, 3)) < 0.95))
  np.testing.assert_array_equal(blocks, completion.make_masks("random_blocks", 4, seed=3))
  assert not np.array_equal(blocks[0], blocks[1])  # a draw per image
  assert not np.array_equal(blocks, completion.make_masks("random_blocks", 4, seed=4))
  # An image's blocks do not depend on how many images are masked with it.
  np.testing.assert_array_equal(
      blocks[2:], completion.make_masks("random_blocks", 2, seed=3, first_index=2))
  with pytest.raises(ValueError, match="unknown mask kind 'middle'"):
    completion.make_masks("middle", 1)
  with pytest.raises(ValueError, match="completion.masks='center,center'"):
    completion.parse_mask_kinds("center,center")


def test_psnr_and_ssim_score_the_hidden_region_only():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 64, 64, 3))
  hidden = 1 - completion.make_masks("center", 3)
  assert np.all(np.isinf(image_metrics.masked_psnr(x, x, hidden)))
  np.testing.assert_allclose(image_metrics.masked_ssim(x, x, hidden), 1.0, atol=1e-12)
  # A constant error of delta (in [0, 1] units) on hidden pixels: PSNR = -20 log10(delta);
  # visible pixels, however wrong, do not count.
  delta = 0.05
  y = np.where(hidden > 0, np.clip(x, -0.8, 0.8) + 2 * delta, -x)
  np.testing.assert_allclose(
      image_metrics.masked_psnr(np.clip(x, -0.8, 0.8), y, hidden), -20 * np.log10(delta))
  # Gaussian noise of standard deviation s ([0, 1] units) on the hidden pixels:
  # PSNR ~= -10 log10(s^2) (9,216 noisy values; 3.5 s from the clip at 0 and 1).
  s = 0.1
  x_mid = np.clip(x, -0.3, 0.3)
  noisy = x_mid + 2 * s * rng.standard_normal(x.shape) * hidden
  assert abs(image_metrics.masked_psnr(x_mid, noisy, hidden).mean() - 20.0) < 0.25
  ssims = [image_metrics.masked_ssim(x_mid, x_mid + 2 * s * rng.standard_normal(x.shape)
                                     * hidden, hidden).mean() for s in (0.01, 0.05, 0.2)]
  assert 1.0 > ssims[0] > ssims[1] > ssims[2] > 0.0
  # The SSIM map is Wang et al.'s, with scipy's Gaussian filter (radius 5 = 11 taps).
  ndimage = pytest.importorskip("scipy.ndimage")
  blur = lambda a: ndimage.gaussian_filter(a, (0, 1.5, 1.5, 0), truncate=3.5, mode="reflect")
  a, b = image_metrics.to_unit(x_mid), image_metrics.to_unit(noisy)
  mu_a, mu_b = blur(a), blur(b)
  expected = (((2 * mu_a * mu_b + 1e-4) * (2 * (blur(a * b) - mu_a * mu_b) + 9e-4))
              / ((mu_a ** 2 + mu_b ** 2 + 1e-4)
                 * (blur(a * a) - mu_a ** 2 + blur(b * b) - mu_b ** 2 + 9e-4)))
  np.testing.assert_allclose(image_metrics.ssim_map(a, b), expected, atol=1e-12)
  with pytest.raises(ValueError, match="images \\[0\\] have an empty region"):
    image_metrics.masked_psnr(x[:1], x[:1], np.zeros((1, 64, 64, 1)))


@pytest.fixture(scope="module")
def initial_states():
  """init_state of the tiny VAE-GAN and crVAE-GAN configs (compiled once per module)."""
  return {v: stage1.init_state(tiny_rgb_config(v)) for v in ("vaegan", "crvaegan")}


def test_complete_images_pads_batches_to_the_device_count_only():
  """Image batches are split over the devices; 3 images run as one batch of 4 on 2
  devices (not padded to completion.batch_size); 5 with batch_size 3 in two batches of 4
  (3 rounded up to the device count; one shape, one compilation)."""
  mesh = sharding.make_mesh(2)
  seen = []

  def fake_fn(gen_vars, disc_vars, x, m):
    del gen_vars, disc_vars
    seen.append(x.shape[0])
    return -x * m, jax.numpy.zeros((x.shape[0], 2)) + x[:, :1, 0, 0]  # [b, steps + 1]

  x = np.random.default_rng(0).uniform(-1, 1, (5, 64, 64, 3)).astype(np.float32)
  m = completion.make_masks("left", 5)
  out = completion.complete_images(fake_fn, None, None, x[:3], m[:3], mesh, 64)
  assert seen == [4] and out.x_hat.shape == (3, 64, 64, 3) and out.trace.shape == (3, 2)
  np.testing.assert_array_equal(out.completed, x[:3] * m[:3])  # x^ is 0 where hidden
  out = completion.complete_images(fake_fn, None, None, x, m, mesh, 3)
  assert seen[1:] == [4, 4]
  np.testing.assert_array_equal(out.trace[:, 0], x[:, 0, 0, 0])  # rows in order


def _calibrated_generator(config, state, images):
  """The generator's variables with BatchNorm running averages set (40 momentum
  updates) to the statistics of a real forward pass: a random-init decoder with its
  init averages (mean 0, variance 1) draws near-constant images; calibrated, it draws
  images that vary with z, so hidden pixels are not trivially guessed."""
  model = stage1.build(config, axis_name=None).model
  eps = jax.random.normal(jax.random.key(2), (len(images),) + model.latent_shape)
  variables = stage1.generator_variables(state)

  def update(_, stats):
    return model.apply({"params": variables["params"], "batch_stats": stats}, images, eps,
                       eps, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  stats = jax.jit(lambda s: jax.lax.fori_loop(0, 40, update, s))(variables["batch_stats"])
  return model, {"params": variables["params"], "batch_stats": stats}


def test_completion_fits_visible_pixels_recovers_hidden_ones_and_is_per_image(
    initial_states):
  """Targets decoded from z* ~ N(0, I) are reachable: from the masked image's posterior
  mean, Adam on z must fit the visible pixels and thereby recover the hidden ones; each
  image's completion is the same whatever batch and device count it runs in."""
  config = tiny_rgb_config("crvaegan")  # the generation LSTM is part of decode
  state = initial_states["crvaegan"]
  model, gen = _calibrated_generator(config, state,
                                     stage1.fixed_images(tiny_source(), 8, 0))
  disc = stage1.build(config, axis_name=None).disc
  z_true = jax.random.normal(jax.random.key(1), (3,) + model.latent_shape)
  decode = jax.jit(lambda z: model.apply(gen, z, method=model.decode))
  x = np.asarray(decode(z_true))  # [3, 64, 64, 3]
  assert x.std() > 0.2  # images, not a flat colour
  m = completion.make_masks("center", 3)
  start = np.asarray(decode(model.apply(gen, x * m, method=model.encode).mean))
  steps = 40
  outs = {}
  for devices, rows in ((2, slice(0, 3)), (1, slice(1, 3))):  # 3 images pad to 4 on 2
    mesh = sharding.make_mesh(devices)
    fn = completion.make_completion_fn(model, disc, mesh, steps=steps, learning_rate=0.1)
    g, d = sharding.replicate(mesh, (gen, state.disc))
    outs[devices] = completion.complete_images(fn, g, d, x[rows], m[rows], mesh, 4)
  out = outs[2]
  assert out.trace.shape == (3, steps + 1) and np.all(np.isfinite(out.trace))
  assert np.all(out.trace[:, -1] < 0.2 * out.trace[:, 0])  # the objective falls 5x+
  assert np.mean(np.diff(out.trace, axis=1) < 0) > 0.8  # ... almost every step
  mse = lambda a, region: (np.square(a - x) * region).sum() / (3 * region.sum())
  assert mse(out.x_hat, m) < mse(start, m) / 5  # visible pixels fitted
  assert mse(out.x_hat, 1 - m) < mse(start, 1 - m) / 3  # hidden ones recovered
  np.testing.assert_array_equal(out.completed * (1 - m) + x * m, out.completed)
  np.testing.assert_array_equal(out.completed * m, x * m)  # visible pixels kept
  # Images 1 and 2 alone on one device: the same optimisation (D scores each image alone).
  np.testing.assert_allclose(outs[1].trace, out.trace[1:], rtol=2e-3, atol=1e-2)
  np.testing.assert_allclose(outs[1].x_hat, out.x_hat[1:], atol=2e-3)


def _tiny_run(workdir, variant, state):
  """A random-init tiny Stage1 checkpoint (step 0) and its config.json: restoring and
  completing need no training."""
  config = tiny_rgb_config(variant)
  ckpts = checkpoints.Checkpoints(str(workdir), best=False)
  ckpts.save_latest(0, state)
  ckpts.wait()
  ckpts.close()
  checkpoints.write_config(str(workdir), config)
  return config


def _tiny_completion(config, num_images=3, steps=3):
  config.completion.num_images = num_images
  config.completion.steps = steps
  config.completion.batch_size = 4
  return config


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, initial_states):
  root = tmp_path_factory.mktemp("completion_runs")
  return {v: (_tiny_run(root / v, v, state), root / v)
          for v, state in initial_states.items()}


def _check_outputs(out_dir, num_images, labels):
  masks = list(completion.MASK_KINDS)
  for i in range(num_images):  # rows: truth, occluded, one per model; a column per mask
    size = Image.open(os.path.join(out_dir, f"image_{i:03d}.png")).size
    assert size == (2 * (len(masks) * 66 + 2), 2 * ((2 + len(labels)) * 66 + 2))
  assert not os.path.exists(os.path.join(out_dir, f"image_{num_images:03d}.png"))
  with open(os.path.join(out_dir, "completion_metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  assert metrics["masks"] == masks and list(metrics["results"]) == labels
  assert metrics["hidden_fraction"]["center"] == 0.25
  for label in labels:
    for kind in masks:
      r = metrics["results"][label][kind]
      assert np.isfinite(r["psnr"]) and -1 < r["ssim"] < 1
      assert len(r["psnr_per_image"]) == num_images
      assert r["objective_last"] < r["objective_first"]
  with open(os.path.join(out_dir, "completion_metrics.md"), encoding="utf-8") as f:
    table = f.read()
  assert all(f"| {kind} |" in table for kind in masks)
  assert table.count("| center |") == len(labels)
  return metrics


def test_complete_compares_two_restored_models_on_two_devices(tiny_runs, tmp_path):
  config_a, workdir_a = tiny_runs["vaegan"]
  config_a = _tiny_completion(config_a.copy_and_resolve_references())
  workdir_b = tiny_runs["crvaegan"][1]
  config_b = completion.compare_config(str(workdir_b))  # its config.json alone
  assert config_b.model.variant == "crvaegan" and config_b.objective.kappa > 0
  summary = completion.complete(config_a, str(workdir_a), source=tiny_source(),
                                out_dir=str(tmp_path / "out"),
                                compare=(config_b, str(workdir_b)))
  metrics = _check_outputs(tmp_path / "out", 3, ["vaegan", "crvaegan"])
  assert metrics["models"]["crvaegan"]["step"] == 0
  assert summary["results"]["vaegan"]["left"]["psnr"] == metrics["results"]["vaegan"][
      "left"]["psnr"]


def test_main_complete_mode_reads_the_compare_workdirs_config(tiny_runs, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for i, image in enumerate(tiny_source(n=4).images):
    Image.fromarray(image).save(folder / f"{i:02d}.png")
  config, workdir = tiny_runs["crvaegan"]
  config = _tiny_completion(config.copy_and_resolve_references(), num_images=2)
  config.train.num_devices = 1
  config.data.source, config.data.image_dir = "folder", str(folder)
  compare = tiny_runs["vaegan"][1]
  with main_flags("experiments/configs/rgb.py:emoji_crvaegan,cpu", workdir, "complete",
                  config) as parsed:
    parsed.compare_workdir = str(tmp_path / "nowhere")
    with pytest.raises(app.UsageError, match="--compare_workdir: no such workdir: .*nowhere"):
      cli.main(["main"])
    parsed.compare_workdir = str(tmp_path / "images")  # a folder, but no trained run
    with pytest.raises(app.UsageError, match="images.config.json does not exist"):
      cli.main(["main"])
    parsed.compare_workdir = str(compare)
    cli.main(["main"])
    _check_outputs(workdir / "completion", 2, ["crvaegan", "vaegan"])
    parsed.mode = ["sample"]
    with pytest.raises(app.UsageError, match="--mode=complete only"):
      cli.main(["main"])
  with main_flags("experiments/configs/mnist.py:crvae,cpu", tmp_path / "mnist", "complete",
                  make_tiny_config()):
    with pytest.raises(app.UsageError, match="RGB Stage1 configs"):
      cli.main(["main"])
