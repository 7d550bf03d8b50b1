"""The data-parallel VAE-GAN / crVAE-GAN Stage1 step (docs/objectives.md, O5-O8).

Written once per device and mapped over the 1-D mesh like the MNIST step
(`crvae_jax.train.mnist_step`): each device holds b = B / devices real images.

Per device:
- the generator reconstructs its b images (z ~ q(z|x)) and decodes b prior samples;
- the discriminator batch is [b real | b/2 prior samples | b/2 reconstructions]: exactly
  50% / 25% / 25% on every device and so on the global batch; minibatch discrimination
  runs over the global discriminator batch (all-gathered);
- one forward pass, two backward passes (`jax.vjp`):
    L_G = MSE(x_rec, x) (mean over B*H*W*C) + sum_t w_t KL_t (summed over the latent,
          mean over images; w = alpha1 for blocks 1-3, alpha2 after)
          + beta * L_adv + kappa * L_MI
    L_adv = -log D(fake) over the 2 x b/2 fakes (non-saturating; our choice)
    L_MI  = MSE(MIHead(trunk(fake)), stop_gradient(u(fake))): the target is constant, so
            no gradient reaches the generation LSTM through it; the MI head is trained
            with the generator, the trunk only by L_D;
    L_D   = binary cross-entropy over the discriminator batch;
  gradients of L_G w.r.t. the generator and MI head, of L_D w.r.t. the discriminator,
  each averaged over devices;
- the discriminator's update goes through `optimizer.gated`: when its accuracy
  on the (global) batch exceeds 0.9 its parameters and Adam state stay bit-identical;
- a non-finite loss or gradient skips the whole step (every state field kept).

Dropout masks are drawn per device (fold_in of the step key and the device index), so
unlike the MNIST step the result depends on the number of devices.
"""

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from crvae_jax import objectives, randomness
from crvae_jax.sharding import BATCH_AXIS, data_parallel, global_indices
from crvae_jax.train.guards import all_finite, keep_if


@flax.struct.dataclass
class GanState:
  step: jax.Array  # [] int32
  gen: Any  # RgbVAE {'params', 'batch_stats'}
  mi: Any  # MIHead {'params', 'batch_stats'} ({} without the MI term)
  disc: Any  # Discriminator {'params'}
  g_opt: Any  # over {'gen': gen params, 'mi': mi params}
  d_opt: Any  # gated, over disc params


@flax.struct.dataclass
class GanWeights:
  alpha1: float  # KL weight of latent blocks 1-3
  alpha2: float  # KL weight of the later blocks
  beta: float  # adversarial term
  kappa: float  # MI term (0: no MI head)


def weighted_kl(posterior, num_blocks: int, alpha1: float, alpha2: float):
  """(sum_t w_t KL_t averaged over images, KL per block [B, T]); w = alpha1 for blocks
  1-3 (latent channels 0 ... 3C/T - 1), alpha2 for the rest."""
  kl_blocks = objectives.kl_per_block(objectives.kl_to_standard_normal(*posterior),
                                      num_blocks)  # [B, T]
  w = objectives.block_weights(num_blocks, alpha2, alpha1)
  return (kl_blocks * w).sum(-1).mean(), kl_blocks


def discriminator_batch(real, prior_samples, reconstructions):
  """[b real | first b/2 prior samples | first b/2 reconstructions] (50% / 25% / 25%)
  and labels [2b] (1 = real). All inputs [b, ...], b even."""
  b = real.shape[0]
  if b % 2:
    raise ValueError(f"per-device batch {b} must be even (50/25/25 split)")
  half = b // 2
  batch = jnp.concatenate([real, prior_samples[:half], reconstructions[:half]])
  return batch, jnp.concatenate([jnp.ones(b), jnp.zeros(b)])


def mi_loss(prediction, target):
  """MSE of the MI head's prediction of u; the target is held constant (no gradient)."""
  return jnp.mean(jnp.square(prediction - jax.lax.stop_gradient(target)))


def _per_device(state: GanState, images, rng, *, model, disc, mi_head, g_tx, d_tx,
                weights: GanWeights, num_blocks: int, max_d_accuracy: float):
  """One update on this device's images [b, 64, 64, 3] in [-1, 1]; b even."""
  b = images.shape[0]
  half = b // 2
  step_key = jax.random.fold_in(rng, state.step)
  keys = randomness.example_keys(step_key, global_indices(b))
  eps = randomness.normals(keys, jnp.arange(2), model.latent_shape)  # [b, 2, *latent]
  eps_q, eps_p = eps[:, 0], eps[:, 1]
  dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 1 << 20),
                                   jax.lax.axis_index(BATCH_AXIS))

  def losses(gm, d_params):
    out, gen_stats = model.apply({"params": gm["gen"], **_stats(state.gen)}, images,
                                 eps_q, eps_p, train=True, mutable=["batch_stats"])
    d_batch, labels = discriminator_batch(images, out.prior_sample, out.reconstruction)
    # The trunk runs the real and the generated rows as two batches (`features`' split)
    # so the generator's backward pass skips the real images' half.
    features_and_logits = lambda m, x: (f := m.features(x, True, split=b),
                                        m.logit(f, True))
    f, logits = disc.apply({"params": d_params}, d_batch, method=features_and_logits,
                           rngs={"dropout": dropout_key})  # [2b, 4, 4, 8c], [2b]
    loss_d = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean((logits > 0) == (labels > 0.5))
    loss_adv = jax.nn.softplus(-logits[b:]).mean()  # -log sigmoid(logit) on the fakes
    recon = jnp.mean(jnp.square(out.reconstruction - images))
    kl, kl_blocks = weighted_kl(out.posterior, num_blocks, weights.alpha1, weights.alpha2)
    mi_stats = {}
    loss_mi = jnp.zeros(())
    if weights.kappa:
      u_hat, mi_stats = mi_head.apply({"params": gm["mi"], **_stats(state.mi)}, f[b:],
                                      train=True, mutable=["batch_stats"])
      loss_mi = mi_loss(u_hat, jnp.concatenate([out.code_prior[:half], out.code_rec[:half]]))
    loss_g = recon + kl + weights.beta * loss_adv + weights.kappa * loss_mi
    aux = {"gen_stats": gen_stats, "mi_stats": mi_stats,
           "metrics": {"loss_g": loss_g, "loss_d": loss_d, "recon_mse": recon,
                       "kl": kl_blocks.sum(-1).mean(), "kl_per_block": kl_blocks.mean(0),
                       "adv": loss_adv, "mi": loss_mi, "d_accuracy": accuracy}}
    return (loss_g, loss_d), aux

  gm = {"gen": state.gen["params"], "mi": state.mi.get("params", {})}
  local = lambda tree: jax.lax.pcast(tree, BATCH_AXIS, to="varying")
  (loss_g, loss_d), vjp, aux = jax.vjp(losses, local(gm), local(state.disc["params"]),
                                       has_aux=True)
  one, zero = jnp.ones_like(loss_g), jnp.zeros_like(loss_d)
  grads_g = jax.lax.pmean(vjp((one, zero))[0], BATCH_AXIS)
  grads_d = jax.lax.pmean(vjp((zero, one))[1], BATCH_AXIS)
  metrics = jax.lax.pmean(aux["metrics"], BATCH_AXIS)

  g_updates, g_opt = g_tx.update(grads_g, state.g_opt, gm)
  new_gm = optax.apply_updates(gm, g_updates)
  apply_d = metrics["d_accuracy"] <= max_d_accuracy  # the gate (global accuracy)
  d_updates, d_opt = d_tx.update(grads_d, state.d_opt, state.disc["params"],
                                 apply_update=apply_d)
  d_params = optax.apply_updates(state.disc["params"], d_updates)

  grad_norms = (optax.tree.norm(grads_g), optax.tree.norm(grads_d))
  finite = all_finite(metrics["loss_g"], metrics["loss_d"], *grad_norms)
  new_state = GanState(
      step=state.step + 1,
      gen=keep_if(finite, {"params": new_gm["gen"], **aux["gen_stats"]}, state.gen),
      mi=keep_if(finite, {"params": new_gm["mi"], **aux["mi_stats"]} if weights.kappa
                 else state.mi, state.mi),
      disc=keep_if(finite, {"params": d_params}, state.disc),
      g_opt=keep_if(finite, g_opt, state.g_opt),
      d_opt=keep_if(finite, d_opt, state.d_opt))
  metrics.update(grad_norm_g=grad_norms[0], grad_norm_d=grad_norms[1],
                 d_update_skipped=1.0 - apply_d.astype(jnp.float32),
                 skipped=1.0 - finite.astype(jnp.float32))
  return new_state, metrics


def _stats(variables):
  return {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}


def init_gan_state(model, disc, mi_head, g_tx, d_tx, rng, *, batch: int = 2,
                   use_mi: bool = True) -> GanState:
  """Fresh parameters and optimizer states (initialised outside the mesh)."""
  k_gen, k_disc, k_mi = jax.random.split(rng, 3)
  x = jnp.zeros((batch, 64, 64, 3))
  eps = jnp.zeros((batch,) + model.latent_shape)
  gen = jax.jit(model.init)(k_gen, x, eps, eps)  # compiled: eager init is slow
  disc_vars = jax.jit(disc.init)(k_disc, x)
  features = jnp.zeros((batch, 4, 4, 8 * disc.width))  # the trunk's output
  mi = jax.jit(mi_head.init)(k_mi, features) if use_mi else {}
  gm = {"gen": gen["params"], "mi": mi.get("params", {})}
  return GanState(step=jnp.zeros((), jnp.int32), gen=dict(gen), mi=dict(mi),
                  disc={"params": disc_vars["params"]}, g_opt=g_tx.init(gm),
                  d_opt=d_tx.init(disc_vars["params"]))


def make_gan_step(model, disc, mi_head, g_tx, d_tx, weights: GanWeights, mesh: Mesh, *,
                  max_d_accuracy: float = 0.9):
  """Jitted `step(state, images [B, 64, 64, 3] sharded over 'batch', rng) -> (state,
  metrics)`; B must be a multiple of 2 x devices. `state` is donated. d_tx must be
  gated (`optimizer.make_discriminator_optimizer`); its update is skipped when the
  discriminator's accuracy on the batch exceeds max_d_accuracy."""
  per_device = functools.partial(_per_device, model=model, disc=disc, mi_head=mi_head,
                                 g_tx=g_tx, d_tx=d_tx, weights=weights,
                                 num_blocks=model.num_blocks, max_d_accuracy=max_d_accuracy)
  return data_parallel(per_device, mesh, (P(), P(BATCH_AXIS), P()), (P(), P()),
                       model=model, donate_argnums=(0,))
