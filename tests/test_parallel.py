"""The data-parallel step: 2 devices compute the update 1 device computes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from crvae_jax import sharding
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import mnist_step, optimizer


def _run_steps(config, data, num_devices, steps=2, tx=None):
  mesh = sharding.make_mesh(num_devices)
  model = mnist_family.build_model(config)
  tx = tx or mnist_family.build_optimizer(config, len(data.train_images))
  state = sharding.replicate(mesh, mnist_family.init_state(model, tx, 0))
  step_fn = mnist_step.make_train_step(
      model, tx, mnist_step.make_objective(config.objective, config.model.num_blocks), mesh,
      num_samples=config.objective.num_samples)
  rng = jax.random.key(3)
  for i in range(steps):
    batch = data.train_images[i * config.train.batch_size:(i + 1) * config.train.batch_size]
    state, metrics = step_fn(state, sharding.shard_batch(mesh, batch), rng)
  return jax.device_get(state), jax.device_get(metrics)


def test_two_devices_compute_the_one_device_gradient(tiny_config, tiny_data):
  # With SGD(lr=1) the parameter change *is* the (pmean-ed) gradient of the global batch.
  assert len(jax.devices()) >= 2, "conftest should fake 2 CPU devices"
  init = mnist_family.init_variables(mnist_family.build_model(tiny_config), 0)
  sgd = optax.sgd(1.0)
  one, m1 = _run_steps(tiny_config, tiny_data, 1, steps=1, tx=sgd)
  two, m2 = _run_steps(tiny_config, tiny_data, 2, steps=1, tx=sgd)
  g1 = jax.tree.map(lambda a, b: a - b, one.params, init["params"])
  g2 = jax.tree.map(lambda a, b: a - b, two.params, init["params"])
  scale = max(np.abs(a).max() for a in jax.tree.leaves(g1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
               g1, g2)
  # BatchNorm running statistics come from the global batch on both.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               one.batch_stats, two.batch_stats)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-5)


def test_iwae_objective_runs_data_parallel(tiny_config, tiny_data):
  tiny_config.objective.kind = "iwae"
  tiny_config.objective.num_samples = 3
  tiny_config.objective.beta = 1.0
  one, m1 = _run_steps(tiny_config, tiny_data, 1, steps=1)
  two, m2 = _run_steps(tiny_config, tiny_data, 2, steps=1)
  np.testing.assert_allclose(m1["bound"], m2["bound"], rtol=1e-5)
  assert np.isfinite(m1["loss"])


def test_lstm_group_gets_lr_over_divisor_and_elementwise_clip():
  params = {"posterior_block": {"lstm": {"w": jnp.zeros(2)}}, "decoder": {"w": jnp.zeros(2)}}
  labels = optimizer.param_groups(params)
  assert labels == {"posterior_block": {"lstm": {"w": "lstm"}}, "decoder": {"w": "default"}}
  tx = optimizer.make_optimizer(learning_rate=0.1, lstm_lr_divisor=8, lstm_grad_clip=5,
                                halve_every_steps=0)
  grads = {"posterior_block": {"lstm": {"w": jnp.array([100.0, -1.0])}},
           "decoder": {"w": jnp.array([100.0, -1.0])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step is -lr * sign(g) (up to eps), whatever the gradient's size.
  np.testing.assert_allclose(updates["decoder"]["w"], [-0.1, 0.1], rtol=1e-5)
  np.testing.assert_allclose(updates["posterior_block"]["lstm"]["w"], [-0.0125, 0.0125],
                             rtol=1e-5)
  # Clipping acts before Adam: with clip 5 the second moment sees 5, not 100.
  clipped = optax.clip(5.0).update(grads["posterior_block"]["lstm"], None)[0]
  np.testing.assert_allclose(clipped["w"], [5.0, -1.0])


def test_learning_rate_halves_on_schedule():
  tx = optimizer.make_optimizer(learning_rate=1.0, lstm_lr_divisor=1, lstm_grad_clip=5,
                                halve_every_steps=2)
  params = {"w": jnp.zeros(1)}
  state = tx.init(params)
  sizes = []
  for _ in range(5):
    updates, state = tx.update({"w": jnp.ones(1)}, state, params)
    sizes.append(float(-updates["w"][0]))
  np.testing.assert_allclose(sizes, [1, 1, 0.5, 0.5, 0.25], rtol=1e-4)


def test_map_batches_pads_and_keeps_every_row():
  mesh = sharding.make_mesh(2)
  data = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  fn = jax.jit(lambda b, off: b.sum(-1) + 0 * off)
  out = sharding.map_batches(fn, data, mesh, batch_size=3)  # rounded up to 4
  np.testing.assert_array_equal(out, data.sum(-1))


def test_batches_are_assembled_from_the_rows_each_process_holds():
  mesh = sharding.make_mesh(2)
  assert sharding.process_rows(mesh, 8) == slice(0, 8)  # one process holds every row
  x = np.arange(24).reshape(8, 3)
  batch = sharding.shard_batch(mesh, x, np.arange(8)[::-1])
  assert batch.sharding.spec == P(sharding.BATCH_AXIS)
  np.testing.assert_array_equal(sharding.to_host(batch), x[::-1])
  with pytest.raises(ValueError, match="holds 4 rows of a batch of 8"):
    sharding.from_process_rows(mesh, x[:4], 8)
  with pytest.raises(ValueError, match="does not split over 2 devices"):
    sharding.process_rows(mesh, 7)
