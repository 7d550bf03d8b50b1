"""The PyTorch speed reference (benchmarks/torch_reference.py) is the JAX model, written
as a PyTorch practitioner writes it: same parameters, same building blocks (nn.LSTM with
crvae_jax's weights computes crvae_jax's channel-recurrent blocks), the same optimizer
groups, and its torch.compile variant computes what its eager one does.
"""

import math

import numpy as np
import pytest

from conftest import make_tiny_config
from experiments.configs import mnist as mnist_configs

torch = pytest.importorskip(
    "torch", reason="PyTorch is a test-only dependency; install torch==2.13.0 (CPU) to "
    "check the benchmarks' PyTorch reference")
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import torch_reference as ref


def test_blocks_compute_the_jax_blocks_with_copied_weights():
  # nn.LSTM vs StackedLSTM, posterior, generator, split/merge, bounded_logvar, deconv.
  ref.check_blocks_against_jax(seed=0)


@pytest.mark.parametrize("row", ["crvae", "cvae"])
def test_model_has_the_flax_parameter_count_and_shapes(row):
  ref.check_model_against_flax(mnist_configs.get_config(f"{row},cpu"))
  paper = mnist_configs.config_at_scale(row, "paper")
  assert ref.num_params(ref.model_from_config(paper)) == ref.flax_num_params(paper)


def test_only_the_one_sample_elbo_steps_of_crvae_and_cvae_are_ported():
  ported = {row: ref.ports_config(mnist_configs.get_config(f"{row},cpu"))
            for row in mnist_configs.ROWS}
  assert {r for r, ok in ported.items() if ok} == {"crvae", "crvae_t4", "crvae_t16", "cvae"}
  with pytest.raises(ValueError, match="objective.kind='iwae'"):
    ref.model_from_config(mnist_configs.get_config("criwa,cpu"))


def test_cvae_optimizer_has_one_group_and_trains():
  config = make_tiny_config("cvae")
  model = ref.model_from_config(config)
  opt, lstm_params = ref.make_optimizer(model, config)
  assert not lstm_params and len(opt.param_groups) == 1
  trainer = ref.Trainer(model, config)
  before = [q.detach().clone() for q in model.parameters()]
  assert math.isfinite(trainer._steps(2))  # pylint: disable=protected-access
  assert all(not torch.equal(a, q) for a, q in zip(before, model.parameters())
             if q.requires_grad)  # every parameter trained


def test_lstm_bias_hh_is_frozen_and_summed_into_the_jax_bias():
  lstm = ref.make_lstm(6, 3)
  for k in range(2):
    bias_hh = getattr(lstm, f"bias_hh_l{k}")
    assert not bias_hh.requires_grad and not bias_hh.detach().any()
    np.testing.assert_array_equal(ref.lstm_flax_params(lstm)[f"layer{k}"]["bias"],
                                  [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])  # forget gate 1


def test_optimizer_is_fused_adam_with_the_jax_groups():
  config = make_tiny_config()
  model = ref.model_from_config(config)
  opt, lstm_params = ref.make_optimizer(model, config)
  other, lstm = opt.param_groups
  assert opt.defaults["fused"]
  assert lstm["lr"] == pytest.approx(config.optim.learning_rate / config.model.num_blocks)
  assert other["lr"] == config.optim.learning_rate
  assert lstm["params"] == lstm_params
  names = {id(p): n for n, p in model.named_parameters()}
  assert {names[id(p)].split(".")[1] for p in lstm_params} == {"lstm"}
  assert len(lstm_params) == 2 * 2 * 3  # 2 blocks x 2 layers x (w_ih, w_hh, b_ih)
  trainable = [p for p in model.parameters() if p.requires_grad]
  assert sorted(map(id, other["params"] + lstm["params"])) == sorted(map(id, trainable))


def test_train_step_clips_lstm_gradients_and_keeps_frozen_biases():
  config = make_tiny_config()
  config.optim.lstm_grad_clip = 1e-4  # small enough to bind
  torch.manual_seed(0)
  model = ref.model_from_config(config)
  trainer = ref.Trainer(model, config)
  grads = torch.cat([p.grad.flatten() for p in trainer.lstm_params])
  assert grads.abs().max() == pytest.approx(1e-4)  # clipped, and some were larger
  other = [p for p in model.parameters() if p.requires_grad and
           all(p is not q for q in trainer.lstm_params)]
  assert max(p.grad.abs().max() for p in other) > 1e-4  # the rest is not clipped
  frozen = [p for p in model.parameters() if not p.requires_grad]
  assert len(frozen) == 4 and all(p.grad is None and not p.any() for p in frozen)
  assert math.isfinite(trainer.run(steps=1))


def test_compiled_evaluator_computes_the_eager_log_px():
  config = make_tiny_config()
  torch.manual_seed(0)
  model = ref.model_from_config(config)
  x = (torch.rand(3, 1, 28, 28) < 0.3).float().contiguous(memory_format=torch.channels_last)
  got = {}
  for variant in ("eager", "compile"):
    torch.manual_seed(1)  # the same eps: they are drawn outside the compiled graphs
    got[variant] = ref.Evaluator(model, variant).log_px(x, num_samples=5, chunk=2)
  assert torch.isfinite(got["eager"]).all()
  np.testing.assert_allclose(got["compile"].numpy(), got["eager"].numpy(), rtol=1e-4)


# --------------------------------------------------------------------------- Stage1 GAN
# benchmarks/torch_gan_reference.py: the VAE-GAN / crVAE-GAN step.
# pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
from benchmarks import gan_throughput
from benchmarks import torch_gan_reference as gan_ref
from test_rgb_training import tiny_rgb_config


@pytest.mark.parametrize("row", ["crvaegan", "vaegan"])
def test_gan_port_has_the_flax_parameter_counts_per_network_and_optimizer_group(row):
  for scale in ("cpu", "paper"):
    counts = gan_ref.check_param_counts(gan_throughput.config_at_scale(row, scale))
    assert counts["all"] == counts["gen"] + counts["mi"] + counts["disc"]
    assert (counts["mi"] > 0) == (row == "crvaegan")
    assert (counts["g_lstm"] > 0) == (row == "crvaegan")


@pytest.fixture(scope="module")
def jax_crvaegan_step():
  return gan_ref.jax_reference_step(tiny_rgb_config("crvaegan", num_devices=1))


def test_crvaegan_step_computes_the_jax_step_with_copied_weights(jax_crvaegan_step):
  # One step each, the JAX state copied into torch: losses, accuracy, gate, gradient
  # norms and every updated parameter agree (a wrong layout, loss term or lr fails).
  metrics = gan_ref.check_step_against_jax(tiny_rgb_config("crvaegan"),
                                           reference=jax_crvaegan_step)
  assert metrics["d_update_skipped"] == 0.0  # the discriminator's update was compared too


def test_vaegan_step_computes_the_jax_step_with_copied_weights():
  metrics = gan_ref.check_step_against_jax(tiny_rgb_config("vaegan"))
  assert metrics["mi"] == 0.0 and metrics["d_update_skipped"] == 0.0


def test_gan_step_check_fails_when_the_lstms_have_the_wrong_learning_rate(
    jax_crvaegan_step, monkeypatch):
  make = gan_ref.make_optimizers

  def wrong_lstm_lr(model, config):
    opt_g, opt_d = make(model, config)
    opt_g.param_groups[1]["lr"] *= config.optim.lstm_lr_divisor  # LSTMs at lr
    return opt_g, opt_d

  monkeypatch.setattr(gan_ref, "make_optimizers", wrong_lstm_lr)
  with pytest.raises(AssertionError, match="lstm"):
    gan_ref.check_step_against_jax(tiny_rgb_config("crvaegan"),
                                   reference=jax_crvaegan_step)


def test_gan_optimizers_are_fused_adam_with_the_jax_groups():
  config = tiny_rgb_config("crvaegan")
  model = gan_ref.model_from_config(config)
  opt_g, opt_d = gan_ref.make_optimizers(model, config)
  assert opt_g.defaults["fused"] and opt_d.defaults["fused"]
  (default, lstm), (trunk, heads) = opt_g.param_groups, opt_d.param_groups
  lr = config.optim.learning_rate
  assert lstm["lr"] == pytest.approx(lr / config.optim.lstm_lr_divisor)
  assert default["lr"] == heads["lr"] == lr
  assert trunk["lr"] == lr * config.optim.disc_trunk_lr_factor
  names = {id(p): n for n, p in model.named_parameters()}
  # The LSTMs and the posterior's BN over their features (crvae_jax's is_lstm_path).
  assert {names[id(p)].rsplit(".", 1)[0] for p in lstm["params"]} == {
      "gen.posterior_block.lstm", "gen.posterior_block.lstm_bn",
      "gen.generator_block.lstm"}
  assert all(names[id(p)].startswith("disc.trunk.") for p in trunk["params"])
  generator_side = default["params"] + lstm["params"]
  assert not any(names[id(p)].startswith("disc.") for p in generator_side)
  config.optim.disc_warmup = True
  with pytest.raises(ValueError, match="disc_warmup"):
    gan_ref.make_optimizers(model, config)


def _tensors(params):
  return [p.detach().clone() for p in params]


def test_gan_gate_keeps_the_discriminator_and_its_adam_state():
  config = tiny_rgb_config("crvaegan", max_d_accuracy=-1.0)  # always gated
  config.optim.lstm_grad_clip = 1e-4  # small enough to bind
  torch.manual_seed(0)
  model = gan_ref.model_from_config(config)
  disc0, gen0 = _tensors(model.disc.parameters()), _tensors(model.gen.parameters())
  trainer = gan_ref.GanTrainer(model, config, warm=False)
  out = trainer.step(trainer.batches[0])
  out = trainer.step(trainer.batches[1])
  assert float(out["d_update_skipped"]) == 1.0 and trainer.gated == [1.0, 1.0]
  assert all(torch.equal(a, b) for a, b in zip(disc0, model.disc.parameters()))
  assert not trainer.opt_d.state  # Adam never stepped: no moments, no count
  assert all(p.grad is not None for p in trainer.d_params)  # its backward still ran
  assert not all(torch.equal(a, b) for a, b in zip(gen0, model.gen.parameters()))
  grads = torch.cat([p.grad.flatten() for p in trainer.lstm_params])
  assert grads.abs().max() == pytest.approx(1e-4)  # LSTM gradients clipped
  config.objective.max_d_accuracy = 1.0  # never gated
  trainer = gan_ref.GanTrainer(model, config, warm=False)
  trainer.step(trainer.batches[0])
  assert trainer.gated == [0.0] and trainer.opt_d.state
  assert not all(torch.equal(a, b) for a, b in zip(disc0, model.disc.parameters()))
  assert math.isfinite(trainer.run(steps=1))
