"""64x64 RGB Stage1 networks (VAE-GAN, crVAE-GAN): parameter counts from docs/models.md
section 4, shapes, the global-batch minibatch discrimination, and the gated
discriminator optimizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from crvae_jax.models.rgb import (Discriminator, MIHead, MinibatchDiscrimination, RgbVAE,
                                  max_pool2)
from crvae_jax import sharding
from crvae_jax.train import optimizer

conv = lambda k, cin, cout, bias=False: k * k * cin * cout + (cout if bias else 0)
dense = lambda din, dout, bias=True: din * dout + (dout if bias else 0)
bn = lambda c: 2 * c
lstm2 = lambda din: dense(din + 512, 4 * 512) + dense(512 + 512, 4 * 512)


def expected_generator_params(variant: str) -> int:
  """Re-derived by hand from docs/models.md section 4 (width 32, T=8, LSTM 512)."""
  enc = (conv(5, 6, 32) + bn(32) + conv(3, 64, 64) + bn(64) + conv(3, 128, 128) + bn(128)
         + conv(3, 256, 256) + bn(256) + conv(3, 256, 256) + bn(256) + conv(3, 512, 256)
         + bn(256))
  dec = (bn(256) + conv(4, 256, 256) + bn(256) + conv(3, 256, 256) + bn(256)
         + conv(4, 256, 128) + bn(128) + conv(4, 128, 64) + bn(64) + conv(4, 64, 64)
         + bn(64) + conv(3, 64, 64) + bn(64) + conv(3, 64, 3, True))
  if variant == "vaegan":
    heads = 2 * dense(4096, 1024) + dense(1024, 4096)
  else:
    posterior = conv(3, 256, 64) + 1024 + lstm2(512) + bn(512) + dense(512, 128)
    generator = lstm2(128) + dense(512, 128) + 1024 + conv(3, 64, 256)
    heads = posterior + generator
  return enc + dec + heads


def expected_discriminator_params() -> int:
  trunk = (conv(5, 3, 64, True) + conv(5, 64, 128, True) + conv(5, 128, 256, True)
           + conv(3, 256, 256, True))
  head = dense(4096, 1024) + 1024 * 100 * 5 + dense(1024 + 100, 1)
  return trunk + head


def expected_mi_head_params() -> int:
  return conv(3, 256, 64) + bn(64) + conv(1, 64, 64) + bn(64) + dense(1024, 1024)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _init_generator(model, batch=2):
  x = jnp.zeros((batch, 64, 64, 3))
  both = lambda m, x: (m.encode(x), m.decode(jnp.zeros((x.shape[0],) + m.latent_shape)))
  return model.init(jax.random.key(0), x, method=both)


@pytest.mark.parametrize("variant", ["vaegan", "crvaegan"])
def test_paper_scale_generator_parameter_count(variant):
  shapes = jax.eval_shape(lambda: _init_generator(RgbVAE(variant=variant)))
  assert _count(shapes["params"]) == expected_generator_params(variant)


def test_paper_scale_discriminator_parameter_count():
  d = Discriminator()
  shapes = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3))))
  assert _count(shapes["params"]) == expected_discriminator_params()
  mi = jax.eval_shape(lambda: MIHead().init(jax.random.key(0), jnp.zeros((2, 4, 4, 256))))
  assert _count(mi["params"]) == expected_mi_head_params()


@pytest.mark.parametrize("variant", ["vaegan", "crvaegan"])
def test_generator_shapes_range_and_train_mode_batch_stats(variant):
  model = RgbVAE(variant=variant, width=4, lstm_hidden=16)
  variables = _init_generator(model, batch=3)
  x = jax.random.uniform(jax.random.key(1), (3, 64, 64, 3), minval=-1, maxval=1)
  q, updates = model.apply(variables, x, train=True, method=model.encode,
                           mutable=["batch_stats"])
  assert q.mean.shape == q.logvar.shape == (3,) + model.latent_shape
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert any(jax.tree.leaves(changed["encoder"]))
  if variant == "crvaegan":  # BN over the posterior LSTM's features follows `train`
    assert all(jax.tree.leaves(changed["posterior_block"]))
  z = jax.random.normal(jax.random.key(2), (3,) + model.latent_shape)
  image = model.apply(variables, z, method=model.decode)
  assert image.shape == (3, 64, 64, 3)
  assert float(jnp.abs(image).max()) <= 1.0
  code = model.apply(variables, z, method=model.generation_code)
  assert code.shape == z.shape


def test_discriminator_outputs_and_dropout():
  d = Discriminator(width=4, hidden=32, num_kernels=10, kernel_dim=3)
  x = jax.random.uniform(jax.random.key(0), (4, 64, 64, 3), minval=-1, maxval=1)
  variables = d.init(jax.random.key(1), x)
  logit = d.apply(variables, x)
  assert logit.shape == (4,)
  f = d.apply(variables, x, method=d.features)
  assert f.shape == (4, 4, 4, 32)  # 8 * width
  mi = MIHead(latent_channels=64)
  assert mi.apply(mi.init(jax.random.key(2), f), f).shape == (4, 4, 4, 64)
  np.testing.assert_array_equal(d.apply(variables, x), logit)  # eval: deterministic
  train = lambda seed: d.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(0), train(1))  # train: dropout draws differ
  # The trunk's spatial dropout drops whole channels (and scales the rest by 2).
  ones = jnp.ones((4, 8, 8, 32))
  dropped = np.asarray(d.apply(variables, ones, rngs={"dropout": jax.random.key(3)},
                               method=lambda m, a: m.spatial_dropout(a, deterministic=False)))
  assert set(np.unique(dropped)) == {0.0, 2.0}
  assert np.all(dropped.min(axis=(1, 2)) == dropped.max(axis=(1, 2)))  # per channel


def test_max_pool2_value_and_gradient_are_nn_max_pool_bit_for_bit():
  # Integer-valued input: many ties, where the gradient's choice (the first maximum of
  # each window, row-major) matters.
  x = jax.random.randint(jax.random.key(0), (3, 8, 6, 5), -2, 3).astype(jnp.float32)
  x = x.at[0, :4, :4].set(1.0)  # whole windows tied
  g = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))
  grad = lambda pool: jax.jit(lambda x, g: jax.vjp(pool, x)[1](g)[0])(x, g)
  reference = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(max_pool2(x), reference(x))
  np.testing.assert_array_equal(grad(max_pool2), grad(reference))


def test_discriminator_split_trunk_gives_the_same_features_and_masks():
  d = Discriminator(width=2, hidden=8, num_kernels=4, kernel_dim=2)
  x = jax.random.uniform(jax.random.key(0), (6, 64, 64, 3), minval=-1, maxval=1)
  variables = d.init(jax.random.key(1), x)
  features = lambda split: d.apply(variables, x, True, split, method=d.features,
                                   rngs={"dropout": jax.random.key(2)})
  np.testing.assert_allclose(features(4), features(0), rtol=1e-5, atol=1e-6)


def test_discriminator_split_trunk_prunes_the_real_rows_from_the_generator_gradient():
  # The generator's gradient (through the generated rows [4:] only) must run the trunk's
  # forward and backward-data convolutions of those rows and nothing of the real rows:
  # 4 + 4 convolutions (the joined form ran the real rows' backward too: 15).
  d = Discriminator(width=2, hidden=8, num_kernels=4, kernel_dim=2, conv_impl="xla")
  x = jax.random.uniform(jax.random.key(0), (6, 64, 64, 3), minval=-1, maxval=1)
  variables = d.init(jax.random.key(1), x)
  w = jax.random.normal(jax.random.key(3), (6, 4, 4, 16))

  def loss(fake, split):
    f = d.apply(variables, jnp.concatenate([x[:4], fake]), True, split,
                method=d.features, rngs={"dropout": jax.random.key(2)})
    return jnp.sum(f * w)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  hlo = grad.lower(x[4:], 4).compile().as_text()
  assert hlo.count(" convolution(") == 8, hlo.count(" convolution(")
  np.testing.assert_allclose(grad(x[4:], 4), grad(x[4:], 0), rtol=1e-5, atol=1e-6)
  # No gradient into the real rows.
  real_grad = jax.grad(lambda x: jnp.sum(d.apply(variables, x, True, 4, method=d.features,
                                                 rngs={"dropout": jax.random.key(2)})))(x)
  assert not np.any(real_grad[:4]) and np.all(np.abs(real_grad[4:]).sum((1, 2, 3)) > 0)


def test_minibatch_discrimination_spans_the_global_batch():
  mbd = MinibatchDiscrimination(num_kernels=7, kernel_dim=3)
  h = jax.random.normal(jax.random.key(0), (8, 12))
  params = mbd.init(jax.random.key(1), h)
  whole = mbd.apply(params, h)  # [8, 7]
  # By hand: o_ik = sum_j exp(-|M_i,k - M_j,k|_1).
  m = np.asarray(h @ params["params"]["kernel"]).reshape(8, 7, 3)
  by_hand = np.exp(-np.abs(m[:, None] - m[None]).sum(-1)).sum(1)
  np.testing.assert_allclose(whole, by_hand, rtol=1e-5)
  mesh = sharding.make_mesh(2)
  sharded = MinibatchDiscrimination(num_kernels=7, kernel_dim=3, axis_name="batch")
  per_device = jax.shard_map(lambda p, h: sharded.apply(p, h), mesh=mesh,
                             in_specs=(P(), P("batch")), out_specs=P("batch"))
  np.testing.assert_allclose(jax.jit(per_device)(params, h), whole, rtol=1e-6)


def test_gate_leaves_discriminator_params_and_adam_state_bit_identical():
  d = Discriminator(width=2, hidden=8, num_kernels=4, kernel_dim=2)
  params = d.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))["params"]
  tx = optimizer.make_discriminator_optimizer(learning_rate=1e-3, trunk_lr_factor=0.5)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)

  @jax.jit
  def step(params, state, accuracy):  # the GAN step's gate: accuracy <= 0.9
    updates, state = tx.update(grads, state, params, apply_update=accuracy <= 0.9)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params1, state1 = step(params, state, jnp.float32(0.5))  # below the gate: update
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                          params, params1)))
  params2, state2 = step(params1, state1, jnp.float32(0.95))  # above: nothing moves
  jax.tree.map(np.testing.assert_array_equal, params2, params1)
  jax.tree.map(np.testing.assert_array_equal, state2.inner_state, state1.inner_state)
  assert int(state2.step) == 2  # every call counted ...
  counts = [int(s[0].count) for s in
            (v.inner_state for v in state2.inner_state.inner_states.values())]
  assert counts == [1, 1]  # ... Adam only the applied one (trunk and heads)
  params3, _ = step(params2, state2, jnp.float32(0.9))  # exactly 0.9 is not "above"
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                          params2, params3)))
  # The trunk trains at half the heads' rate: Adam's first step moves each by ~lr.
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params, params1)
  assert moved["trunk_0"]["kernel"] == pytest.approx(0.5e-3, rel=1e-3)
  assert moved["out"]["kernel"] == pytest.approx(1e-3, rel=1e-3)
