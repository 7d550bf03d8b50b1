"""The hand-written backward passes (crvae_jax/models/fused_backward.py,
`model.fused_backward`): the same values and gradients as autodiff, on one device and
data-parallel, and the same variables and names, so checkpoints load either way (a
resumed training run still refuses a changed flag, as any model key)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from crvae_jax.models import fused_backward, layers, lstm
from crvae_jax.models.rgb import MIHead, RgbVAE
from crvae_jax.train import checkpoints
from tests.conftest import make_tiny_config, two_data_parallel_train_steps


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


def _autodiff_recurrence(gates_x, w_h):
  zeros = jnp.zeros_like(gates_x[0, :, :w_h.shape[0]])
  return jax.lax.scan(lambda c, g: lstm.lstm_cell(c, g, w_h), (zeros, zeros), gates_x)[1]


def test_lstm_recurrence_matches_autodiff():
  rng = np.random.default_rng(0)
  t, b, h = 6, 5, 8
  gates_x = jnp.asarray(rng.standard_normal((t, b, 4 * h)), jnp.float32)
  w_h = jnp.asarray(rng.standard_normal((h, 4 * h)) / np.sqrt(h), jnp.float32)
  d_hs = jnp.asarray(rng.standard_normal((t, b, h)), jnp.float32)
  ref, ref_vjp = jax.vjp(_autodiff_recurrence, gates_x, w_h)
  out, out_vjp = jax.vjp(fused_backward.lstm_recurrence, gates_x, w_h)
  np.testing.assert_array_equal(out, ref)  # the same forward arithmetic
  for a, b in zip(ref_vjp(d_hs), out_vjp(d_hs)):
    assert _rel_err(a, b) < 1e-5


def _bn_grads(module, x, dy, axis_name=None):
  variables = module.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.3, variables["params"])  # not 1 and 0

  def f(params, x):
    return module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                        mutable=["batch_stats"])

  (y, stats), vjp = jax.vjp(f, params, x)
  return y, stats, vjp((dy, jax.tree.map(jnp.zeros_like, stats)))


def test_fused_batch_norm_matches_flax_values_statistics_and_gradients():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((6, 5, 5, 7)) * 2 + 1, jnp.float32)
  dy = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  flax_bn = layers.batch_norm(True, None)
  fused_bn = layers.batch_norm(True, None, fused_backward=True)
  assert isinstance(flax_bn, nn.BatchNorm)
  assert isinstance(fused_bn, layers.BatchNorm) and not isinstance(fused_bn, nn.BatchNorm)
  y_ref, stats_ref, grads_ref = _bn_grads(flax_bn, x, dy)
  y, stats, grads = _bn_grads(fused_bn, x, dy)
  # Same variables (checkpoints load either way), same forward and running statistics.
  assert jax.tree.structure(flax_bn.init(jax.random.key(0), x)) == \
      jax.tree.structure(fused_bn.init(jax.random.key(0), x))
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(stats_ref), jax.tree.leaves(stats)):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
  for a, b in zip(jax.tree.leaves(grads_ref), jax.tree.leaves(grads)):
    assert _rel_err(a, b) < 1e-5
  # Evaluation mode: the running averages, as nn.BatchNorm.
  v = {"params": fused_bn.init(jax.random.key(0), x)["params"],
       "batch_stats": stats_ref["batch_stats"]}
  np.testing.assert_allclose(layers.batch_norm(False, None, fused_backward=True).apply(v, x),
                             layers.batch_norm(False, None).apply(v, x), rtol=1e-6)


@pytest.mark.parametrize("kind", ["batch_norm", "lstm"])
def test_data_parallel_gradients_equal_the_whole_batch_gradient(kind):
  """Two devices, each half of the batch: BatchNorm over the device axis (synchronised
  statistics and backward sums) and the LSTM with a replicated recurrent kernel give the
  gradients of the whole batch on one device."""
  mesh = jax.make_mesh((2,), ("batch",))  # tests/conftest.py: two CPU devices
  rng = np.random.default_rng(2)
  if kind == "batch_norm":
    x = jnp.asarray(rng.standard_normal((8, 3, 3, 4)) * 2 + 1, jnp.float32)
    c = x.shape[-1]
    w = (jnp.asarray(rng.random(c) + 0.5, jnp.float32), jnp.asarray(rng.random(c), jnp.float32))
    target = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    loss = lambda w, x, t, axis: jnp.sum(
        fused_backward.batch_norm_train(x, *w, 1e-5, axis)[0] * t)
  else:
    x = jnp.asarray(rng.standard_normal((5, 8, 16)), jnp.float32)  # [T, B, 4H]
    w = jnp.asarray(rng.standard_normal((4, 16)) * 0.5, jnp.float32)
    target = jnp.asarray(rng.standard_normal((5, 8, 4)), jnp.float32)
    loss = lambda w, x, t, axis: jnp.sum(fused_backward.lstm_recurrence(x, w) * t)
  spec = P("batch") if kind == "batch_norm" else P(None, "batch")  # the batch axis
  whole = jax.grad(loss, argnums=(0, 1))(w, x, target, None)
  # Replicated w (invariant): its gradient is summed over devices by cotangent_like.
  per_device = lambda w, x, t: jax.grad(loss, argnums=(0, 1))(w, x, t, "batch")
  put = lambda a: jax.device_put(a, NamedSharding(mesh, spec))
  split = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec, spec),
                                out_specs=(P(), spec)))(w, put(x), put(target))
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(split)):
    assert _rel_err(a, b) < 1e-5


@pytest.mark.parametrize("row", ["crvae", "crvae_2layer"])
def test_data_parallel_train_steps_with_fused_backward_match_autodiff(row):
  """Two shard_map train steps on two devices end where autodiff's end (same
  parameters, BatchNorm statistics and loss to float rounding)."""
  results = []
  for fused in (False, True):
    config = make_tiny_config(row)
    config.model.fused_backward = fused
    results.append(two_data_parallel_train_steps(config))
  (s_ref, m_ref), (s, m) = results
  assert jax.tree.structure(s.params) == jax.tree.structure(s_ref.params)  # same names
  np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves((s_ref.params, s_ref.batch_stats)),
                  jax.tree.leaves((s.params, s.batch_stats))):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_a_workdir_from_before_the_key_resumes_only_without_it(tiny_config):
  tiny_config.model.fused_backward = False
  saved = json.loads(tiny_config.to_json_best_effort())
  del saved["model"]["fused_backward"]  # a config.json written before the key existed
  assert checkpoints.config_differences(saved, tiny_config) == []
  tiny_config.model.fused_backward = True
  assert checkpoints.config_differences(saved, tiny_config) == [
      "model.fused_backward: False (workdir) != True (now)"]


def test_rgb_crvaegan_and_mi_head_with_fused_backward_match_autodiff():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.random((4, 64, 64, 3)) * 2 - 1, jnp.float32)
  eps = jnp.asarray(rng.standard_normal((4, 4, 4, 16)), jnp.float32)
  features = jnp.asarray(rng.standard_normal((4, 4, 4, 16)), jnp.float32)
  results = []
  for fused in (False, True):
    vae = RgbVAE(variant="crvaegan", num_blocks=4, width=2, lstm_hidden=16,
                 latent_channels=16, fused_backward=fused)
    mi = MIHead(latent_channels=16, fused_backward=fused)
    v, m = vae.init(jax.random.key(0), x, eps, eps), mi.init(jax.random.key(1), features)

    def loss(params, v=v, m=m, vae=vae, mi=mi):
      out, _ = vae.apply({**v, "params": params[0]}, x, eps, eps, train=True,
                         mutable=["batch_stats"])
      u, _ = mi.apply({**m, "params": params[1]}, features, train=True,
                      mutable=["batch_stats"])
      return (jnp.mean(jnp.square(out.reconstruction - x)) + jnp.mean(out.prior_sample)
              + jnp.mean(jnp.square(u)) + jnp.mean(out.posterior[1]))

    results.append(jax.jit(jax.value_and_grad(loss))((v["params"], m["params"])))
  (l_ref, g_ref), (l, g) = results
  assert jax.tree.structure(g) == jax.tree.structure(g_ref)
  np.testing.assert_allclose(l, l_ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-5 * float(jnp.max(jnp.abs(a))))
