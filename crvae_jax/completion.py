"""Image completion with a trained Stage1 generator and discriminator (docs/objectives.md, O11).

For an image x [64, 64, 3] in [-1, 1] and a mask m [64, 64, 1] (1 = visible pixel):

  z* = argmin_z  ||x^ * m - x * m||^2  +  gamma ||z||^2 / 2  +  tau log(1 - D(x^)),
  x^ = decode(z),  gamma = 1e-5,  tau = 0.003;  completed image  x * m + x^ * (1 - m).

- The squared error is summed over the visible pixels and channels (in [-1, 1] units).
- The paper prints "+ gamma log N(z; 0, I)" inside the min, which would push z *away*
  from the prior. We read it as the prior penalty -gamma log N(z; 0, I), which is
  gamma ||z||^2 / 2 up to a constant.
- log(1 - D(x^)) = log sigmoid(-logit) = -softplus(logit), computed from the logit.
- decode is the whole generation path (for crVAE-GAN the generation LSTM, then the
  decoder), BatchNorm with its running averages; D in eval mode (no dropout).
- Minibatch discrimination makes D's score of one image depend on the others in its
  batch. We score every x^ in a batch of its own (`jax.vmap` over batches of 1), so
  each image's objective depends on its own z only: the gradient of the batch's summed
  objective is every image's own gradient, and Adam (element-wise) runs the same
  optimisation for an image whatever else is in the batch or how the batch is split
  over devices. In a batch of one the minibatch features are exp(0) = 1 per kernel (the
  image's distance to itself), a value D never saw in training (there they sum over the
  2b images of its batch); scoring x^ within the completion batch instead would tie an
  image's completion to its batch-mates. With the paper's weights the squared error
  (hundreds to thousands) dwarfs both tau log(1 - D) and gamma ||z||^2 / 2.
- Our choices (not in the paper): z starts at the posterior mean of q(z | x * m) (the
  hidden pixels set to 0, mid-grey), then `completion.steps` Adam steps of
  `completion.learning_rate` on z. The whole optimisation is one jitted function (a
  `lax.scan` over steps), mapped over the device mesh by images.

Masks (`MASK_KINDS`; the name says which part is *hidden*): 'center' (the centre square
of half the side), 'left', 'right', 'top', 'bottom' (half the image) and
'random_blocks' (8 squares of 16 x 16 at random places, seeded per image).
"""

import functools
import json
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P
from tqdm import tqdm

from crvae_jax import distributed, image_metrics, images, sharding
from crvae_jax.config_checks import ConfigError
from crvae_jax.data import rgb as rgb_data
from crvae_jax.families import family_of, saved_config, stage1
from crvae_jax.train import workdir_lock

MASK_KINDS = ("center", "left", "right", "top", "bottom", "random_blocks")


def make_masks(kind: str, num: int, size: int = 64, *, seed: int = 0, first_index: int = 0,
               num_blocks: int = 8, block_size: int = 16) -> np.ndarray:
  """Masks [num, size, size, 1] float32, 1 on visible pixels. 'random_blocks' draws
  image i's blocks from default_rng([seed, first_index + i]), so an image's mask does
  not depend on how many images are masked with it."""
  m = np.ones((num, size, size, 1), np.float32)
  half, quarter = size // 2, size // 4
  if kind == "center":
    m[:, quarter:quarter + half, quarter:quarter + half] = 0
  elif kind == "left":
    m[:, :, :half] = 0
  elif kind == "right":
    m[:, :, half:] = 0
  elif kind == "top":
    m[:, :half] = 0
  elif kind == "bottom":
    m[:, half:] = 0
  elif kind == "random_blocks":
    for i in range(num):
      rng = np.random.default_rng([seed, first_index + i])
      for y, x in rng.integers(0, size - block_size + 1, (num_blocks, 2)):
        m[i, y:y + block_size, x:x + block_size] = 0
  else:
    raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
  return m


def parse_mask_kinds(text: str) -> tuple:
  """'center,left' -> ('center', 'left'), refusing unknown or repeated kinds."""
  kinds = tuple(k.strip() for k in text.split(",") if k.strip())
  unknown = [k for k in kinds if k not in MASK_KINDS]
  if unknown or not kinds or len(set(kinds)) != len(kinds):
    raise ValueError(f"completion.masks={text!r}: give distinct kinds from {MASK_KINDS}, "
                     "comma-separated")
  return kinds


def composite(x, x_hat, m):
  """The completed image: visible pixels from x, hidden ones from x^."""
  return x * m + x_hat * (1 - m)


def logit_alone(disc, disc_vars, images):
  """D's logit of every image [B, 64, 64, 3] scored in a batch of its own -> [B]."""
  return jax.vmap(lambda image: disc.apply(disc_vars, image[None])[0])(images)


def completion_objective(z, x, m, *, model, disc, gen_vars, disc_vars, gamma: float,
                         tau: float):
  """(objective per image [B], x^ [B, 64, 64, 3]) for latents z [B, *latent_shape],
  images x [B, 64, 64, 3] and masks m [B, 64, 64, 1] (equation in the module doc)."""
  x_hat = model.apply(gen_vars, z, method=model.decode)  # [B, 64, 64, 3]
  fit = jnp.square((x_hat - x) * m).sum((1, 2, 3))  # [B]
  prior = 0.5 * jnp.square(z).reshape(z.shape[0], -1).sum(-1)  # -log N(z; 0, I) + const
  log_one_minus_d = -jax.nn.softplus(logit_alone(disc, disc_vars, x_hat))  # [B]
  return fit + gamma * prior + tau * log_one_minus_d, x_hat


def _complete_per_device(gen_vars, disc_vars, x, m, *, model, disc, steps: int,
                         learning_rate: float, gamma: float, tau: float):
  """This device's images x [b, 64, 64, 3], masks m [b, 64, 64, 1] -> (x^ at the final
  z [b, 64, 64, 3], objective per image before each step and at the end [b, steps+1])."""
  # Per-device ("varying") views of the replicated variables: the custom-gradient conv
  # (`fast_conv`) returns a kernel cotangent too, which must match its input's type.
  gen_vars, disc_vars = jax.lax.pcast((gen_vars, disc_vars), sharding.BATCH_AXIS,
                                      to="varying")
  objective = functools.partial(completion_objective, x=x, m=m, model=model, disc=disc,
                                gen_vars=gen_vars, disc_vars=disc_vars, gamma=gamma,
                                tau=tau)
  # Images are independent: the gradient of the sum is each image's own gradient.
  def summed(z):
    values = objective(z)[0]  # [b]
    return values.sum(), values

  per_image_and_grad = jax.value_and_grad(summed, has_aux=True)
  tx = optax.adam(learning_rate)
  z0 = model.apply(gen_vars, x * m, method=model.encode).mean  # [b, *latent_shape]

  def step(carry, _):
    z, opt_state = carry
    (_, values), grads = per_image_and_grad(z)
    updates, opt_state = tx.update(grads, opt_state, z)
    return (optax.apply_updates(z, updates), opt_state), values  # values [b]

  (z, _), trace = jax.lax.scan(step, (z0, tx.init(z0)), None, length=steps)  # [steps, b]
  final, x_hat = objective(z)
  return x_hat, jnp.concatenate([trace, final[None]]).T  # [b, steps + 1]


def make_completion_fn(model, disc, mesh: Mesh, *, steps: int, learning_rate: float,
                       gamma: float = 1e-5, tau: float = 0.003):
  """Jitted `fn(gen_vars, disc_vars, x [B, 64, 64, 3], m [B, 64, 64, 1]) -> (x^ [B, 64,
  64, 3], trace [B, steps + 1])`, variables replicated, images split over 'batch'.
  model and disc must be built without a mesh axis (eval mode needs none)."""
  per_device = functools.partial(_complete_per_device, model=model, disc=disc,
                                 steps=steps, learning_rate=learning_rate, gamma=gamma,
                                 tau=tau)
  batch = P(sharding.BATCH_AXIS)
  return sharding.data_parallel(per_device, mesh, (P(), P(), batch, batch), (batch, batch),
                                model=model)


class Completion(NamedTuple):
  x_hat: np.ndarray  # [N, 64, 64, 3] decoder output at the final z
  completed: np.ndarray  # [N, 64, 64, 3] x * m + x^ * (1 - m)
  trace: np.ndarray  # [N, steps + 1] objective per image, before each step and at the end


def complete_images(fn, gen_vars, disc_vars, x: np.ndarray, m: np.ndarray, mesh: Mesh,
                    batch_size: int) -> Completion:
  """Run `fn` (from `make_completion_fn`) on images x [N, 64, 64, 3] with masks
  m [N, 64, 64, 1] in batches of min(batch_size, N) (rounded up to a multiple of the
  device count; the last batch padded, the padding dropped). Variables replicated."""
  batch_size = -(-min(batch_size, len(x)) // mesh.size) * mesh.size
  x_hats, traces = [], []
  for lo in range(0, len(x), batch_size):
    xb, mb = x[lo:lo + batch_size], m[lo:lo + batch_size]
    real = len(xb)
    pad = lambda a: np.concatenate([a, np.zeros((batch_size - real,) + a.shape[1:],
                                                a.dtype)])
    x_hat, trace = fn(gen_vars, disc_vars, sharding.shard_batch(mesh, pad(xb)),
                      sharding.shard_batch(mesh, pad(mb)))
    x_hats.append(sharding.to_host(x_hat)[:real])
    traces.append(sharding.to_host(trace)[:real])
  x_hat = np.concatenate(x_hats)
  return Completion(x_hat, composite(x, x_hat, m), np.concatenate(traces))


# --- Restoring trained models and running the comparison (`--mode=complete`) ---------


def compare_config(workdir: str):
  """The config a Stage1 run in `workdir` was trained with (its config.json), for
  --compare_workdir; ValueError for a run of another family."""
  config = saved_config(workdir)
  if family_of(config) != "stage1":
    raise ValueError(f"{workdir} holds a {family_of(config)} run; completion needs a 64x64 "
                     "Stage1 VAE-GAN / crVAE-GAN run")
  return config


def restore_stage1(config, workdir: str, step: Optional[int] = None):
  """(model, disc, generator variables, discriminator variables, step) of the latest
  (or `step`) checkpoint in `workdir`; model and disc built outside a mesh (eval mode)."""
  parts, state, step = stage1.restore(config, workdir, step)
  return parts.model, parts.disc, stage1.generator_variables(state), state.disc, step


def completion_source(config):
  """The images to complete: config.data, read from split completion.tfds_split (a
  held-out split) when the source is tfds and that field is set, and from split
  completion.emoji_split (default the held-out emoji) when the source is emoji."""
  data = config.data
  if data.source == "tfds" and config.completion.tfds_split:
    data = data.copy_and_resolve_references()
    data.tfds_split = config.completion.tfds_split
  if data.source == "emoji":
    data = data.copy_and_resolve_references()
    data.emoji_split = config.completion.emoji_split
  return rgb_data.open_source(data)


def check_completion_config(config) -> tuple:
  """The mask kinds of config.completion; ConfigError naming the first impossible key."""
  cc = config.completion
  for key, ok in (("num_images", cc.num_images >= 1), ("steps", cc.steps >= 1),
                  ("learning_rate", cc.learning_rate > 0), ("gamma", cc.gamma >= 0),
                  ("tau", cc.tau >= 0), ("batch_size", cc.batch_size >= 1)):
    if not ok:
      raise ConfigError(f"config.completion.{key}={cc[key]!r} is invalid: must be "
                        f"{'>= 0' if key in ('gamma', 'tau') else '> 0'}")
  try:
    return parse_mask_kinds(cc.masks)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from e


class Trained(NamedTuple):
  """A restored Stage1 run, built outside a mesh (eval mode)."""
  label: str  # its name in tables: the model variant ('vaegan_a', ... when repeated)
  config: object  # the config it was trained with
  workdir: str
  model: object
  disc: object
  gen_vars: dict  # generator {'params', 'batch_stats'}
  disc_vars: dict  # discriminator {'params'}
  step: int  # the restored checkpoint's step


def run_labels(configs) -> list:
  """Each run's model variant; all suffixed _a, _b, ... when one repeats."""
  labels = [c.model.variant for c in configs]
  if len(set(labels)) < len(labels):
    labels = [f"{label}_{chr(ord('a') + i)}" for i, label in enumerate(labels)]
  return labels


def restore_runs(runs) -> list:
  """[Trained] of every (config, workdir) in `runs` (its latest checkpoint), or
  (config, workdir, step) (that step's)."""
  labels = run_labels([run[0] for run in runs])
  return [Trained(label, c, w, *restore_stage1(c, w, *step))
          for label, (c, w, *step) in zip(labels, runs)]


def complete_with_each(trained, x: np.ndarray, kinds, cc, mesh: Mesh) -> dict:
  """Complete images x [N, 64, 64, 3] under every mask kind in `kinds` with each run in
  `trained` (the same images and masks for all; masks seeded by cc.seed; cc: a
  config.completion section). Returns {kind: {'mask': [N, 64, 64, 1], 'hidden_fraction':
  float, 'completed', 'psnr', 'ssim', 'trace': {label: [N, 64, 64, 3] / [N] / [N] /
  [N, steps + 1]}}}: PSNR and SSIM over the hidden pixels, per image."""
  fns = [make_completion_fn(t.model, t.disc, mesh, steps=cc.steps,
                            learning_rate=cc.learning_rate, gamma=cc.gamma, tau=cc.tau)
         for t in trained]
  variables = [sharding.replicate(mesh, (t.gen_vars, t.disc_vars)) for t in trained]
  out = {}
  for kind in tqdm(kinds, desc="masks", disable=not distributed.is_main()):
    m = make_masks(kind, len(x), seed=cc.seed)  # [N, 64, 64, 1]
    entry = {"mask": m, "hidden_fraction": float(1 - m.mean()), "completed": {},
             "psnr": {}, "ssim": {}, "trace": {}}
    for t, fn, (g, d) in zip(trained, fns, variables):
      done = complete_images(fn, g, d, x, m, mesh, cc.batch_size)
      entry["completed"][t.label] = done.completed
      entry["psnr"][t.label] = image_metrics.masked_psnr(x, done.completed, 1 - m)
      entry["ssim"][t.label] = image_metrics.masked_ssim(x, done.completed, 1 - m)
      entry["trace"][t.label] = done.trace
    out[kind] = entry
  return out


def complete(config, workdir: str, *, source=None, out_dir: Optional[str] = None,
             compare=None) -> dict:
  """Complete `completion.num_images` images (chosen by completion.seed) under every
  mask kind with the latest Stage1 checkpoint of `workdir` and, when compare =
  (config_b, workdir_b), with that run's too (same images, masks and settings).

  Writes to out_dir (default <workdir>/completion), process 0 only: image_<i>.png per
  image (rows: ground truth, occluded, then each model's completion; one column per
  mask kind), completion_metrics.json and completion_metrics.md (mean PSNR and SSIM
  over the hidden pixels, objective before the first and after the last step). Returns
  the metrics dict. (`experiments.completion_table` compares runs with standard
  errors.)"""
  kinds = check_completion_config(config)
  cc = config.completion
  out_dir = out_dir or os.path.join(workdir, "completion")
  mesh = sharding.make_mesh(config.train.num_devices)
  trained = restore_runs([(config, workdir)] + ([tuple(compare)] if compare else []))
  labels = [t.label for t in trained]
  source = source or completion_source(config)
  x = stage1.fixed_images(source, cc.num_images, cc.seed)  # [N, 64, 64, 3]
  distributed.info(f"completing {len(x)} images x {len(kinds)} masks with {', '.join(labels)} "
                   f"({cc.steps} Adam steps of lr {cc.learning_rate})")
  done = complete_with_each(trained, x, kinds, cc, mesh)
  results = {label: {} for label in labels}
  for kind, entry in done.items():
    for label in labels:
      psnr, ssim, trace = (entry[k][label] for k in ("psnr", "ssim", "trace"))
      results[label][kind] = {
          "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
          "objective_first": float(trace[:, 0].mean()),
          "objective_last": float(trace[:, -1].mean()),
          "psnr_per_image": psnr.tolist(), "ssim_per_image": ssim.tolist()}
  summary = {
      "models": {t.label: {"workdir": os.path.abspath(t.workdir), "step": int(t.step),
                           "variant": t.config.model.variant, "row": t.config.get("row", "")}
                 for t in trained},
      "masks": list(kinds),
      "hidden_fraction": {kind: done[kind]["hidden_fraction"] for kind in kinds},
      "settings": {k: cc[k] for k in ("num_images", "seed", "steps", "learning_rate",
                                      "gamma", "tau")},
      "results": results}
  if distributed.is_main():
    with workdir_lock.hold(workdir):
      _write_outputs(out_dir, x, done, labels, summary)
    distributed.info(f"wrote {len(x)} grids and completion_metrics.json/.md to {out_dir}")
  return summary


def completion_grid(x: np.ndarray, done: dict, labels, indices) -> np.ndarray:
  """Images in [0, 1] for a grid of `indices` of x [N, 64, 64, 3] (`done` from
  `complete_with_each`): per image the rows truth, occluded, each label's completion;
  a column per mask kind. Returns [len(indices) * (2 + len(labels)) * kinds, 64, 64, 3],
  row-major (for `images.save_grid(..., num_cols=kinds)`)."""
  kinds = list(done)
  rows = [np.stack([x] * len(kinds), 1),
          np.stack([x * done[k]["mask"] for k in kinds], 1)]
  rows += [np.stack([done[k]["completed"][label] for k in kinds], 1) for label in labels]
  grid = np.stack(rows, 1)[np.asarray(indices)]  # [n, rows, kinds, 64, 64, 3]
  return image_metrics.to_unit(grid).reshape((-1,) + x.shape[1:])


def _write_outputs(out_dir: str, x: np.ndarray, done: dict, labels: list,
                   summary: dict) -> None:
  os.makedirs(out_dir, exist_ok=True)
  for i in range(len(x)):
    images.save_grid(os.path.join(out_dir, f"image_{i:03d}.png"),
                     completion_grid(x, done, labels, [i]), num_cols=len(done))
  with open(os.path.join(out_dir, "completion_metrics.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  lines = ["| mask | hidden | model | PSNR (dB) | SSIM | objective first -> last |",
           "|---|---|---|---|---|---|"]
  for kind in summary["masks"]:
    for label in labels:
      r = summary["results"][label][kind]
      lines.append(f"| {kind} | {summary['hidden_fraction'][kind]:.0%} | {label} | "
                   f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r['objective_first']:.1f} -> "
                   f"{r['objective_last']:.1f} |")
  s = summary["settings"]
  header = (f"Image completion: {s['num_images']} images (seed {s['seed']}), "
            f"{s['steps']} Adam steps of lr {s['learning_rate']} on z, gamma {s['gamma']}, "
            f"tau {s['tau']}. PSNR/SSIM over the hidden pixels, mean over images.\n\n"
            + "".join(f"- {label}: {m['workdir']} (step {m['step']})\n"
                      for label, m in summary["models"].items()) + "\n")
  with open(os.path.join(out_dir, "completion_metrics.md"), "w", encoding="utf-8") as f:
    f.write(header + "\n".join(lines) + "\n")
