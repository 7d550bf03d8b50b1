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


def test_model_has_the_flax_parameter_count_and_shapes():
  ref.check_model_against_flax(mnist_configs.get_config("crvae,cpu"))
  paper = mnist_configs.config_at_scale("crvae", "paper")
  assert ref.num_params(ref.model_from_config(paper)) == ref.flax_num_params(paper)


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
