"""Every jitted step and evaluator is compiled through `crvae_jax.compiled.jit`, so the
CPU kernel choice reaches all of them (the Stage2 step and completion included)."""

from crvae_jax import compiled, completion, likelihood, sharding
from crvae_jax.families import mnist as mnist_family
from crvae_jax.families import stage1, stage2
from crvae_jax.train import mnist_step, stage1_step, stage2_step
from conftest import make_tiny_config
from test_rgb_training import tiny_rgb_config
from test_stage2 import tiny_stage2_config


def test_steps_and_evaluators_take_the_compiler_options(monkeypatch):
  asked = []
  monkeypatch.setattr(compiled, "compiler_options",
                      lambda conv_impl="auto": asked.append(conv_impl) or None)
  mesh = sharding.make_mesh(2)
  config = make_tiny_config()
  config.model.conv_impl = "cpu"
  model = mnist_family.build_model(config)
  tx = mnist_family.build_optimizer(config, 32)
  mnist_step.make_train_step(model, tx, mnist_step.make_objective(
      config.objective, config.model.num_blocks), mesh)
  mnist_step.make_elbo_eval(model, mesh)
  likelihood.make_estimator(model, mesh, num_samples=2, chunk_size=2)
  p = stage1.build(tiny_rgb_config("crvaegan"))
  stage1_step.make_gan_step(p.model, p.disc, p.mi_head, p.g_tx, p.d_tx, p.weights, mesh)
  local = stage1.build(tiny_rgb_config("crvaegan"), axis_name=None)
  completion.make_completion_fn(local.model, local.disc, mesh, steps=1, learning_rate=0.1)
  q = stage2.build(tiny_stage2_config())
  stage2_step.make_stage2_step(stage1=local.model, gen=q.gen, disc=q.disc, g_tx=q.g_tx,
                               d_tx=q.d_tx, mesh=mesh)
  # MNIST step, ELBO, estimator (conv_impl 'cpu'); Stage1 step, completion (the tiny
  # RGB config's kernels); Stage2 step (its 'xla' kernels): one request each.
  assert asked[:3] == ["cpu"] * 3 and len(asked) == 6
  assert asked[5] == tiny_stage2_config().model.conv_impl
