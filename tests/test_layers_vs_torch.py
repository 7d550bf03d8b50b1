"""benchmarks/layers_vs_torch.py --model=gan finds the Stage1 step's layers from the
config (shapes as the model runs them) and times each kind in JAX and PyTorch."""

import math

import numpy as np
import pytest

from benchmarks import gan_throughput

torch = pytest.importorskip(
    "torch", reason="PyTorch is a test-only dependency; install torch==2.13.0 (CPU) to "
    "check the benchmarks' PyTorch reference")
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import layers_vs_torch as lvt


def by_name(rows, name):
  (row,) = [r for r in rows if r.name.startswith(name + " ")]
  return row


def test_gan_layers_follow_the_config_and_the_step():
  config = gan_throughput.config_at_scale("crvaegan", "cpu")
  b, c = config.train.batch_size, config.model.width
  rows = lvt.gan_layers(config)
  assert {r.kind for r in rows} == {"conv", "deconv", "bn", "max_pool2", "minibatch",
                                    "lstm"}
  first = by_name(rows, "gen/encoder/Conv_0")  # CReLU doubles the 3 image channels
  assert (first.in_shape, first.out_shape, first.calls) == ((b, 64, 64, 6),
                                                            (b, 32, 32, c), 1)
  last = by_name(rows, "gen/decoder/Conv_2")  # runs for reconstructions and samples
  assert (last.out_shape, last.calls) == ((b, 64, 64, 3), 2)
  assert all(r.in_shape[1:3] == (64, 64) for r in rows if r.kind == "bn")
  assert len([r for r in rows if r.kind == "bn"]) == 2
  pools = [r for r in rows if r.kind == "max_pool2"]
  assert len(pools) == 4 and all(
      r.out_shape[1] * 2 == r.in_shape[1] and r.calls == 2 for r in pools)
  mb = by_name(rows, "disc/minibatch")  # [real | generated] rows
  assert mb.in_shape == (2 * b, config.model.disc_hidden)
  assert by_name(rows, "gen/generator_block/lstm").calls == 2
  assert any(r.name.startswith("mi/") for r in rows)
  paper = lvt.gan_layers(gan_throughput.config_at_scale("vaegan", "paper"))
  trunk = by_name(paper, "disc/trunk_0")
  assert trunk.out_shape == (64, 64, 64, 64)
  assert not any(r.kind == "lstm" or r.name.startswith("mi/") for r in paper)


def test_every_gan_layer_kind_times_in_jax_and_torch():
  config = gan_throughput.config_at_scale("crvaegan", "cpu")
  config.model.width, config.train.batch_size = 2, 4
  config.model.lstm_hidden, config.model.disc_hidden = 8, 16
  rows = lvt.gan_layers(config)
  rng = np.random.default_rng(0)
  for kind in ("conv", "deconv", "bn", "max_pool2", "minibatch", "lstm"):
    row = min((r for r in rows if r.kind == kind), key=lambda r: math.prod(r.in_shape))
    x = rng.standard_normal(row.in_shape, np.float32)
    dy = rng.standard_normal(row.out_shape, np.float32)
    for fwd, both in (lvt.module_jax_times(row, x, dy, 1, "cpu"),
                      lvt.module_torch_times(torch, row, x, dy, 1)):
      assert 0 < fwd < 1e4 and 0 < both < 1e4, (row.name, fwd, both)


@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_mnist_layers_are_the_models_convolutions(scale):
  """--model=mnist's rows are the crVAE's encoder and decoder kernels, its BatchNorms'
  channels and its LSTMs' inputs at that scale."""
  from crvae_jax.families import mnist as mnist_family  # pylint: disable=g-import-not-at-top
  from experiments.configs import mnist as mnist_configs  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = mnist_configs.config_at_scale("crvae", scale)
  model = mnist_family.build_model(config)
  params = jax.eval_shape(lambda: mnist_family.init_variables(model, 0))["params"]
  kernels = sorted(tuple(leaf.shape) for path, leaf in
                   jax.tree_util.tree_flatten_with_path(params)[0]
                   if path[0].key in ("encoder", "decoder") and path[-1].key == "kernel")
  lstm_inputs = {path[0].key.split("_")[0]: leaf.shape[0] for path, leaf in
                 jax.tree_util.tree_flatten_with_path(params)[0]
                 if "lstm" in str(path) and path[-2].key == "layer0"
                 and path[-1].key == "input_kernel"}
  assert lstm_inputs == lvt.mnist_lstm_inputs(config.model)
  bn_channels = sorted(leaf.shape[0] for path, leaf in
                       jax.tree_util.tree_flatten_with_path(params)[0]
                       if path[0].key in ("encoder", "decoder") and path[-1].key == "scale")
  assert bn_channels == sorted(c for _, _, c in lvt.mnist_batch_norms(config.model.width))
  rows = lvt.mnist_layers(config.model.width)
  assert kernels == sorted((k, k, cin, cout) for _, _, cin, cout, _, k, _, _ in rows)
  decoder = [r for r in rows if r[0].startswith("dec")]
  assert (lvt.out_size("deconv", 16, 4, 2, 2), lvt.out_size("conv", 30, 3, 1, 0),
          lvt.out_size("conv", 28, 5, 2, 3)) == (30, 28, 15)  # the models' layer sizes
  for (_, kind, _, _, hw, k, s, p), nxt in zip(decoder, decoder[1:]):  # sizes chain
    assert lvt.out_size(kind, hw, k, s, p) == nxt[4]
  _, kind, _, _, hw, k, s, p = decoder[-1]
  assert lvt.out_size(kind, hw, k, s, p) == 28  # the decoder ends at the image size


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_the_timed_backward_keeps_the_forward(kind):
  """A conv's vjp alone compiles without the forward conv (XLA drops it: the backward
  needs only x, w and dy); the timed function returns the output too, so it has every
  convolution a train step runs (the CPU kernels the tables time: fast_conv's conv and
  its transposed conv with the custom backward)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from crvae_jax import compiled  # pylint: disable=g-import-not-at-top
  from crvae_jax.models import fast_conv  # pylint: disable=g-import-not-at-top
  if kind == "conv":
    f = lambda x, w: fast_conv.conv2d(x, w, 1, 1)
    args = (jnp.ones((2, 6, 6, 8)), jnp.ones((3, 3, 8, 8)), jnp.ones((2, 6, 6, 8)))
  else:  # 8x8 input: the sub-pixel forward (one conv) and the adjoint-conv backward
    f = lambda x, w: fast_conv.conv_transpose2d(x, w, 2, 1)
    args = (jnp.ones((2, 8, 8, 8)), jnp.ones((4, 4, 8, 8)), jnp.ones((2, 16, 16, 8)))
  convs = lambda fn: jax.jit(fn, compiler_options=compiled.compiler_options("cpu")).lower(
      *args).compile().as_text().count("convolution(")
  assert convs(lambda x, w, dy: jax.vjp(f, x, w)[1](dy)) == 2  # what was timed before
  assert convs(lvt.forward_and_backward(f)) == 3
