"""The data-parallel Stage2 step (docs/objectives.md, Stage2), written once per device and mapped
over the 1-D mesh like the Stage1 step (`stage1_step`).

Per device, with b real high-resolution images s [b, H, H, 3] in [-1, 1]:
- x = s resized to 64x64 (bicubic, antialiased): Stage1's input;
- the frozen Stage1 generator (BN with its running averages, no gradient) gives
  x~_post = its reconstruction of x (z = mean + std * eps) and x~_prior = a decoded prior
  sample; the noise is keyed by (step, global image index) as in Stage1;
- the Stage2 generator maps [x~_prior | x~_post] (one batch of 2b) to high resolution;
- the discriminator scores [s | G(x~_prior) | G(x~_post)] (one batch of 3b, so its BN
  normalises real and generated images together, with statistics over the whole mesh);
- two backward passes of one forward pass (`jax.vjp`), gradients averaged over devices:
    L_D = -[log D(s) + log(1 - D(G(x~_prior))) + log(1 - D(G(x~_post)))]
    L_G = log(1 - D(G(x~_prior))) + log(1 - D(G(x~_post)))            ("saturating")
          + gamma * ||f(S(x)) - f(G(x~_post))||^2 / (h*w*C)
  each term averaged over images; S(x) = s, f = the frozen perceptual network
  (`perceptual.perceptual_distance`). adversarial="non_saturating" replaces the first
  line by -log D(G(x~_prior)) - log D(G(x~_post)) (Goodfellow et al. 2014: the same
  fixed point, but strong gradients while D rejects the samples easily; the paper's
  loss as written is the default);
- a non-finite loss or gradient skips the whole update (every state field kept).

Stage1's and the perceptual network's variables are an argument (`frozen`), never part of
the state: nothing in the step can change them. No dropout and no gate: every random
draw is keyed by global image index and BN statistics are global, so 1 and N devices give
the same update to float rounding.
"""

import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from crvae_jax import randomness
from crvae_jax.models import perceptual
from crvae_jax.models.stage2 import INPUT_SIZE
from crvae_jax.sharding import BATCH_AXIS, data_parallel, global_indices
from crvae_jax.train.guards import all_finite, keep_if

ADVERSARIAL = ("saturating", "non_saturating")


@flax.struct.dataclass
class Stage2State:
  step: jax.Array  # [] int32
  gen: Any  # Stage2Generator {'params', 'batch_stats'}
  disc: Any  # Stage2Discriminator {'params', 'batch_stats'}
  g_opt: Any
  d_opt: Any


def to_stage1_input(images):
  """High-resolution images [B, H, H, 3] -> [B, 64, 64, 3] (bicubic, antialiased)."""
  small = jax.image.resize(images, (images.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "cubic")
  return jnp.clip(small, -1.0, 1.0)


def stage1_outputs(stage1, variables, x, eps_q, eps_p, *, posterior_mean: bool = False):
  """(reconstructions of x [B, 64, 64, 3], prior samples) of the frozen Stage1 model
  (BN with running averages; gradients stopped). z = mean + std * eps_q, or the mean."""
  q = stage1.apply(variables, x, method=stage1.encode)
  z = q.mean if posterior_mean else q.mean + jnp.exp(0.5 * q.logvar) * eps_q
  decode = lambda z: stage1.apply(variables, z, method=stage1.decode)
  return jax.lax.stop_gradient(decode(z)), jax.lax.stop_gradient(decode(eps_p))


def adversarial_losses(logits_real, logits_prior, logits_post, adversarial: str):
  """(L_D, the generator's adversarial term), each averaged over images; logits [b].
  -log D = softplus(-l), -log(1 - D) = softplus(l) with D = sigmoid(l)."""
  sp = jax.nn.softplus
  loss_d = sp(-logits_real).mean() + sp(logits_prior).mean() + sp(logits_post).mean()
  if adversarial == "saturating":  # log(1 - D(G(.))), minimised
    return loss_d, -(sp(logits_prior).mean() + sp(logits_post).mean())
  if adversarial == "non_saturating":  # -log D(G(.))
    return loss_d, sp(-logits_prior).mean() + sp(-logits_post).mean()
  raise ValueError(f"objective.adversarial must be one of {ADVERSARIAL}, got "
                   f"{adversarial!r}")


def _per_device(state: Stage2State, frozen, images, rng, *, stage1, gen, disc, features,
                g_tx, d_tx, gamma: float, adversarial: str):
  """One update on this device's images [b, H, H, 3] in [-1, 1]."""
  b = images.shape[0]
  keys = randomness.example_keys(jax.random.fold_in(rng, state.step), global_indices(b))
  eps = randomness.normals(keys, jnp.arange(2), stage1.latent_shape)  # [b, 2, *latent]
  post, prior = stage1_outputs(stage1, frozen["stage1"], to_stage1_input(images),
                               eps[:, 0], eps[:, 1])  # [b, 64, 64, 3] each
  low = jnp.concatenate([prior, post])  # [2b, 64, 64, 3]
  features_fn = perceptual.frozen_features(features, frozen["perceptual"]) if gamma else None

  def losses(g_params, d_params):
    fake, g_stats = gen.apply({"params": g_params, "batch_stats": state.gen["batch_stats"]},
                              low, train=True, mutable=["batch_stats"])  # [2b, H, H, 3]
    logits, d_stats = disc.apply(
        {"params": d_params, "batch_stats": state.disc["batch_stats"]},
        jnp.concatenate([images, fake]), train=True, mutable=["batch_stats"])  # [3b]
    l_real, l_prior, l_post = jnp.split(logits, 3)
    loss_d, adv = adversarial_losses(l_real, l_prior, l_post, adversarial)
    fake_post = fake[b:]
    percept = jnp.zeros(())
    if gamma:
      percept = perceptual.perceptual_distance(
          features_fn, jax.lax.stop_gradient(images), fake_post).mean()
    loss_g = adv + gamma * percept
    d_real, d_fake = jax.nn.sigmoid(l_real), jax.nn.sigmoid(logits[b:])
    metrics = {"loss_g": loss_g, "loss_d": loss_d, "adv": adv, "perceptual": percept,
               "d_real": d_real.mean(), "d_fake": d_fake.mean(),
               "d_accuracy": ((d_real > 0.5).sum() + (d_fake < 0.5).sum()) / (3 * b),
               "l1_post": jnp.abs(fake_post - images).mean()}
    return (loss_g, loss_d), {"g_stats": g_stats, "d_stats": d_stats, "metrics": metrics}

  local = lambda tree: jax.lax.pcast(tree, BATCH_AXIS, to="varying")
  (loss_g, loss_d), vjp, aux = jax.vjp(losses, local(state.gen["params"]),
                                       local(state.disc["params"]), has_aux=True)
  one, zero = jnp.ones_like(loss_g), jnp.zeros_like(loss_d)
  grads_g = jax.lax.pmean(vjp((one, zero))[0], BATCH_AXIS)
  grads_d = jax.lax.pmean(vjp((zero, one))[1], BATCH_AXIS)
  metrics = jax.lax.pmean(aux["metrics"], BATCH_AXIS)

  g_updates, g_opt = g_tx.update(grads_g, state.g_opt, state.gen["params"])
  d_updates, d_opt = d_tx.update(grads_d, state.d_opt, state.disc["params"])
  g_params = optax.apply_updates(state.gen["params"], g_updates)
  d_params = optax.apply_updates(state.disc["params"], d_updates)
  grad_norms = (optax.tree.norm(grads_g), optax.tree.norm(grads_d))
  finite = all_finite(metrics["loss_g"], metrics["loss_d"], *grad_norms)
  new_state = Stage2State(
      step=state.step + 1,
      gen=keep_if(finite, {"params": g_params, **aux["g_stats"]}, state.gen),
      disc=keep_if(finite, {"params": d_params, **aux["d_stats"]}, state.disc),
      g_opt=keep_if(finite, g_opt, state.g_opt),
      d_opt=keep_if(finite, d_opt, state.d_opt))
  metrics.update(grad_norm_g=grad_norms[0], grad_norm_d=grad_norms[1],
                 param_norm_g=optax.tree.norm(new_state.gen["params"]),
                 skipped=1.0 - finite.astype(jnp.float32))
  return new_state, metrics


def init_stage2_state(gen, disc, g_tx, d_tx, rng, *, batch: int = 2) -> Stage2State:
  """Fresh parameters and optimizer states (initialised outside the mesh)."""
  k_gen, k_disc = jax.random.split(rng)
  size = gen.image_size
  gen_vars = jax.jit(gen.init)(k_gen, jnp.zeros((batch, INPUT_SIZE, INPUT_SIZE, 3)))
  disc_vars = jax.jit(disc.init)(k_disc, jnp.zeros((batch, size, size, 3)))
  return Stage2State(step=jnp.zeros((), jnp.int32), gen=dict(gen_vars),
                     disc=dict(disc_vars), g_opt=g_tx.init(gen_vars["params"]),
                     d_opt=d_tx.init(disc_vars["params"]))


def make_stage2_step(*, stage1, gen, disc, g_tx, d_tx, mesh: Mesh, gamma: float = 0.0,
                     features: Optional[Any] = None, adversarial: str = "saturating"):
  """Jitted `step(state, frozen, images [B, H, H, 3] sharded over 'batch', rng) ->
  (state, metrics)`; B a multiple of the devices; `state` is donated, `frozen`
  ({'stage1': Stage1 generator variables, 'perceptual': the feature network's variables,
  {} when gamma is 0}) is not.

  stage1: the Stage1 `RgbVAE` (bn_axis_name None: it runs in inference mode); gen, disc:
  Stage2 modules with bn_axis_name='batch'; features: the perceptual module (gamma > 0).
  """
  if adversarial not in ADVERSARIAL:
    raise ValueError(f"objective.adversarial must be one of {ADVERSARIAL}, got "
                     f"{adversarial!r}")
  if gamma and features is None:
    raise ValueError("gamma > 0 needs the perceptual network (features)")
  per_device = functools.partial(_per_device, stage1=stage1, gen=gen, disc=disc,
                                 features=features, g_tx=g_tx, d_tx=d_tx, gamma=gamma,
                                 adversarial=adversarial)
  return data_parallel(per_device, mesh, (P(), P(), P(BATCH_AXIS), P()), (P(), P()),
                       model=gen, donate_argnums=(0,))
