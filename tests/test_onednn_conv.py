"""conv_impl='onednn': oneDNN's convolutions through XLA FFI custom calls compute the
plain ops (values and both gradients), the models built on them match 'cpu', and a
machine that cannot build them gets a clear error before anything compiles."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from crvae_jax import config_checks
from crvae_jax.models import fast_conv, layers, onednn_conv
from crvae_jax.models.mnist import MnistVAE
from crvae_jax.models.rgb import Discriminator, RgbVAE
from experiments.configs import mnist as mnist_configs
from tests.conftest import two_data_parallel_train_steps

# requirements.txt installs oneDNN's wheels on Linux x86_64 only (the only wheels there
# are); everywhere else conv_impl='onednn' is refused with a ConfigError.
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="conv_impl='onednn' needs the Linux x86_64 oneDNN wheels of requirements.txt")


def test_onednn_builds_and_loads_here():
  # requirements.txt installs oneDNN's wheels; CI and a fresh set-up must be able to
  # build the FFI library (a failure here names the missing compiler or headers).
  assert onednn_conv.load().endswith(".so")


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


# (kind, Cin, Cout, H=W, K, stride, padding): the conv and deconv geometries of the
# MNIST and 64x64 models, a 1x1 conv, a deconv with padding 2 (16 -> 30), and convs whose
# right pad oneDNN must be given differently from the left: 28 -> 15 with K=5, s=2, p=3
# (pad_r 2), 64 -> 32 with K=5, s=2, p=2 (pad_r 1), 8 -> 2 with K=3, s=4, p=0 (pad_r -1).
GEOMETRIES = [
    ("conv", 1, 8, 28, 5, 2, 3), ("conv", 16, 16, 15, 3, 2, 1), ("conv", 32, 32, 8, 3, 1, 1),
    ("conv", 12, 8, 9, 1, 1, 0), ("conv", 3, 8, 64, 5, 2, 2), ("conv", 16, 24, 6, 3, 1, 0),
    ("conv", 8, 8, 8, 3, 4, 0),
    ("deconv", 64, 32, 8, 4, 2, 1), ("deconv", 32, 16, 16, 4, 2, 2),
    ("deconv", 8, 3, 32, 4, 2, 1),
]


@pytest.mark.parametrize("kind,cin,cout,hw,k,s,p", GEOMETRIES)
def test_onednn_conv_matches_xla_values_and_gradients(kind, cin, cout, hw, k, s, p):
  rng = np.random.default_rng(hw * 100 + cin)
  x = jnp.asarray(rng.standard_normal((3, hw, hw, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
  if kind == "conv":
    ref = lambda x, w: fast_conv.conv2d_xla(x, w, s, p)
    new = lambda x, w: onednn_conv.conv2d(x, w, s, p)
  else:
    ref = lambda x, w: layers.conv_transpose_xla(x, w, s, p)
    new = lambda x, w: onednn_conv.conv_transpose2d(x, w, s, p)
  y_ref, pull_ref = jax.vjp(ref, x, w)
  y_new, pull_new = jax.vjp(jax.jit(new), x, w)
  assert y_new.shape == y_ref.shape
  assert _rel_err(y_ref, y_new) < 1e-5
  dy = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
  for g_ref, g_new in zip(pull_ref(dy), pull_new(dy)):
    assert g_new.shape == g_ref.shape
    assert _rel_err(g_ref, g_new) < 1e-5


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_batches_larger_than_one_call_run_in_slices_with_the_same_values(kind):
  """Forward and backward-data go over at most 256 images per oneDNN call (the C++
  kMaxBatch): 600 images are three slices, the last a smaller one (its own primitive);
  values and both gradients as XLA's."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((600, 6, 6, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 8, 8)) * 0.2, jnp.float32)
  if kind == "conv":
    ref, new = (lambda x, w: fast_conv.conv2d_xla(x, w, 1, 1),
                lambda x, w: onednn_conv.conv2d(x, w, 1, 1))
  else:
    ref, new = (lambda x, w: layers.conv_transpose_xla(x, w, 2, 1),
                lambda x, w: onednn_conv.conv_transpose2d(x, w, 2, 1))
  y_ref, pull_ref = jax.vjp(ref, x, w)
  y_new, pull_new = jax.vjp(jax.jit(new), x, w)
  assert _rel_err(y_ref, y_new) < 1e-5
  assert _rel_err(y_ref[512:], y_new[512:]) < 1e-5  # the last slice
  dy = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
  for g_ref, g_new in zip(pull_ref(dy), pull_new(dy)):
    assert _rel_err(g_ref, g_new) < 1e-5


def test_onednn_conv_refuses_what_it_does_not_compute():
  x = jnp.zeros((1, 8, 6, 4))
  with pytest.raises(ValueError, match="square"):
    onednn_conv.conv2d(x, jnp.zeros((3, 3, 4, 8)), 1, 1)
  with pytest.raises(TypeError, match="float32"):
    onednn_conv.conv2d(jnp.zeros((1, 8, 8, 4), jnp.bfloat16), jnp.zeros((3, 3, 4, 8)))
  with pytest.raises(ValueError, match="same C"):  # 4 input channels, a kernel for 5
    onednn_conv.conv_transpose2d(jnp.zeros((1, 8, 8, 4)), jnp.zeros((4, 4, 5, 8)))
  with pytest.raises(ValueError, match="stride >= 1"):
    onednn_conv.conv2d(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 8)), 0, 1)


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_replicated_kernel_gradients_inside_shard_map_are_summed(kind):
  """As AIS differentiates the decoder inside shard_map with replicated variables: the
  kernel's gradient is the sum over devices, as with XLA's convolution."""
  mesh = jax.make_mesh((2,), ("batch",))  # tests/conftest.py: two CPU devices
  rng = np.random.default_rng(3)
  x = jax.device_put(jnp.asarray(rng.standard_normal((4, 8, 8, 8)), jnp.float32),
                     NamedSharding(mesh, P("batch")))
  w = jnp.asarray(rng.standard_normal((4, 4, 8, 8)) * 0.1, jnp.float32)
  grads = []
  for impl in ("xla", "onednn"):
    f = (lambda x, w: layers.conv_with_impl(impl, x, w, 2, 1)) if kind == "conv" else (
        lambda x, w: layers.conv_transpose_with_impl(impl, x, w, 2, 1))
    per_device = lambda w, x: jax.grad(lambda w, x: jnp.sum(f(x, w) ** 2),
                                       argnums=(0, 1))(w, x)
    grads.append(jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("batch")),
                                       out_specs=(P(), P("batch"))))(w, x))
  for a, b in zip(*grads):
    assert _rel_err(a, b) < 1e-5


def test_onednn_conv_under_vmap():
  """The Stage1 completion vmaps the discriminator over candidate images."""
  rng = np.random.default_rng(4)
  xs = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)
  got = jax.jit(jax.vmap(lambda x: onednn_conv.conv2d(x, w, 1, 1)))(xs)
  want = jax.vmap(lambda x: fast_conv.conv2d_xla(x, w, 1, 1))(xs)
  assert _rel_err(want, got) < 1e-5


def _mnist_grads(conv_impl, config):
  m = config.model
  model = MnistVAE(variant="crvae", num_blocks=m.num_blocks, width=m.width,
                   lstm_hidden=m.lstm_hidden, latent_channels=m.latent_channels,
                   top_dim=m.top_dim, conv_impl=conv_impl)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((4, 28, 28, 1)) < 0.3, jnp.float32)
  eps = jnp.asarray(rng.standard_normal((4, 1) + model.latent_shape), jnp.float32)
  variables = model.init(jax.random.key(0), x, eps)

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, eps, train=True,
                         mutable=["batch_stats"])
    return -jnp.mean(out.recon_ll) + jnp.mean(out.kl_blocks)

  return jax.jit(jax.value_and_grad(loss))(variables["params"])


def test_mnist_crvae_with_onednn_matches_cpu_kernels():
  config = mnist_configs.config_at_scale("crvae", "cpu")
  (l_cpu, g_cpu), (l_dnn, g_dnn) = (_mnist_grads(i, config) for i in ("cpu", "onednn"))
  np.testing.assert_allclose(l_dnn, l_cpu, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_dnn)):
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-5 * float(jnp.max(jnp.abs(a))))


def test_rgb_crvaegan_and_discriminator_with_onednn_match_cpu_kernels():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.random((2, 64, 64, 3)), jnp.float32)
  eps = jnp.asarray(rng.standard_normal((2, 4, 4, 16)), jnp.float32)
  outs = []
  for impl in ("cpu", "onednn"):
    vae = RgbVAE(variant="crvaegan", num_blocks=4, width=4, lstm_hidden=16,
                 latent_channels=16, conv_impl=impl)
    v = vae.init(jax.random.key(0), x, eps, eps)
    disc = Discriminator(width=4, hidden=32, num_kernels=8, conv_impl=impl)
    d = disc.init(jax.random.key(1), x)
    outs.append((jax.jit(lambda v: vae.apply(v, x, eps, eps))(v),
                 jax.jit(lambda d: disc.apply(d, x))(d)))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_data_parallel_train_step_with_onednn_matches_cpu(tiny_config):
  """Two steps of the shard_map train step on two devices (the two devices' calls run
  at the same time) end where the 'cpu' kernels end."""
  tiny_config.model.width = 4  # so that most convs have Cout >= 8 (oneDNN's)
  results = []
  for impl in ("cpu", "onednn"):
    tiny_config.model.conv_impl = impl
    results.append(two_data_parallel_train_steps(tiny_config))
  (s_cpu, m_cpu), (s_dnn, m_dnn) = results
  np.testing.assert_allclose(m_dnn["loss"], m_cpu["loss"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(s_cpu.params), jax.tree.leaves(s_dnn.params)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_missing_onednn_is_a_config_error_before_compilation(monkeypatch):
  config = mnist_configs.config_at_scale("crvae", "cpu")
  config.model.conv_impl = "onednn"
  config_checks.check_mnist_config(config, num_devices=1)  # builds here: accepted
  monkeypatch.setattr(onednn_conv, "_find_onednn", lambda: None)
  onednn_conv.load.cache_clear()
  try:
    with pytest.raises(config_checks.ConfigError,
                       match=r"model.conv_impl='onednn'.*requirements.txt"):
      config_checks.check_mnist_config(config, num_devices=1)
  finally:
    onednn_conv.load.cache_clear()  # the next load() finds and registers it again
