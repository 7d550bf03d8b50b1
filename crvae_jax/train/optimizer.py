"""Per-group Adam: LSTM parameters at lr / divisor with element-wise gradient clipping,
everything else at lr; both learning rates halved every `halve_every_steps`."""

import jax
import jax.numpy as jnp
import optax


def is_lstm_path(path) -> bool:
  """True for parameters inside a `StackedLSTM` (module names contain 'lstm')."""
  return any("lstm" in str(getattr(k, "key", k)) for k in path)


def param_groups(params):
  """Pytree of labels, 'lstm' or 'default', with the structure of `params`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "lstm" if is_lstm_path(path) else "default", params)


def make_optimizer(*, learning_rate: float, lstm_lr_divisor: float, lstm_grad_clip: float,
                   halve_every_steps: int, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam(b1, b2, eps) per group (optax.multi_transform).

  Args:
    learning_rate: base learning rate (non-LSTM parameters).
    lstm_lr_divisor: LSTM learning rate = learning_rate / lstm_lr_divisor (paper: T).
    lstm_grad_clip: LSTM gradients are clipped element-wise to [-c, c] (paper: 5).
    halve_every_steps: staircase decay by 0.5 every this many steps (0 = constant).
  """
  def schedule(lr):
    if halve_every_steps <= 0:
      return optax.constant_schedule(lr)
    return optax.exponential_decay(lr, halve_every_steps, 0.5, staircase=True)

  adam = lambda lr: optax.adam(schedule(lr), b1=b1, b2=b2, eps=eps)
  return optax.multi_transform(
      {"default": adam(learning_rate),
       "lstm": optax.chain(optax.clip(lstm_grad_clip),
                           adam(learning_rate / lstm_lr_divisor))},
      param_groups)


def gated(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """The discriminator's gate: `tx.update(grads, state, params, apply_update=flag)` with
  flag a [] bool. False: a zero update, and inner's state (Adam moments and count) passes
  through unchanged (optax.conditionally_mask; not zeroed gradients fed to Adam). The
  caller decides (the GAN step: flag = batch accuracy <= 0.9). The wrapper's own counter
  (`state.step`) counts every call, inner Adam's `count` only the applied ones.
  """
  return optax.conditionally_mask(
      inner, lambda step, apply_update: apply_update, forward_extra_args=True)


def trunk_or_heads(params):
  """Labels 'trunk' (discriminator layers shared with the MI head) or 'heads'."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "trunk" if str(getattr(path[0], "key", path[0])).startswith("trunk")
      else "heads", params)


def warmup_factor(count):
  """The release's discriminator warm-up: 1/50 for the first 10 applied updates, 1/5
  until 30, then 1."""
  return jnp.where(count < 10, 1 / 50, jnp.where(count < 30, 1 / 5, 1.0))


def make_discriminator_optimizer(*, learning_rate: float, trunk_lr_factor: float = 1.0,
                                 warmup: bool = False, b1: float = 0.9, b2: float = 0.999,
                                 eps: float = 1e-8):
  """Gated Adam for the discriminator: trunk at learning_rate * trunk_lr_factor (the
  release: 0.5, optional), heads at learning_rate; see `gated`. warmup: scale both by
  `warmup_factor` of Adam's count, which counts only applied (ungated) updates."""
  def adam(lr):
    schedule = (lambda count: lr * warmup_factor(count)) if warmup else lr
    return optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  inner = optax.multi_transform(
      {"trunk": adam(learning_rate * trunk_lr_factor), "heads": adam(learning_rate)},
      trunk_or_heads)
  return gated(inner)
