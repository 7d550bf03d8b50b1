"""Model structure: parameter counts from the paper's layer list, shapes, block order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax import objectives
from crvae_jax.models import channel_recurrent, fast_conv, layers, lstm
from crvae_jax.models.mnist import MnistVAE, VARIANTS


def expected_paper_params(variant: str, t: int = 8) -> int:
  """Parameter count re-derived by hand from docs/models.md sections 1, 3 (paper widths)."""
  conv = lambda k, cin, cout, bias=False: k * k * cin * cout + (cout if bias else 0)
  dense = lambda din, dout, bias=True: din * dout + (dout if bias else 0)
  bn = lambda c: 2 * c  # scale + offset
  last_k = 5 if variant in ("vae", "cvae") else 3
  enc = (conv(5, 1, 32) + bn(32) + conv(3, 64, 64) + bn(64) + conv(3, 64, 64) + bn(64)
         + conv(3, 128, 128) + bn(128) + conv(last_k, 128, 128) + bn(128)
         + conv(3, 256, 256) + bn(256))
  dec = (bn(256) + conv(4, 256, 256) + bn(256) + conv(3, 256, 256) + bn(256)
         + conv(4, 256, 128) + bn(128) + conv(3, 128, 128) + bn(128)
         + conv(4, 128, 64) + bn(64) + conv(3, 64, 64) + bn(64) + conv(3, 64, 1, True))
  lstm2 = lambda din: dense(din + 512, 4 * 512) + dense(512 + 512, 4 * 512)
  rec_inf = dense(4096, 1024, False) + 1024 + lstm2(4096 // t) + dense(512, 1024 // t)
  rec_gen = lstm2(1024 // t) + dense(512, 1024 // t) + 1024 + conv(3, 64, 256)
  plain_inf = 2 * conv(3, 256, 64, True)
  plain_gen = conv(3, 64, 256)
  heads = {
      "vae": 2 * dense(4096, 1024) + dense(1024, 4096),
      "cvae": plain_inf + plain_gen,
      "crvae_inference": rec_inf + plain_gen,
      "crvae_generation": plain_inf + rec_gen,
      "crvae": rec_inf + rec_gen,
      "crvae_2layer": rec_inf + rec_gen + (
          dense(1024, 512) + dense(512, 512) + dense(512, 2 * 128)
          + dense(128, 512) + dense(512, 512) + dense(512, 2 * 1024)),
  }[variant]
  return enc + dec + heads


def tiny_model(variant, m):
  """MnistVAE of `variant` with the sizes of config.model `m`."""
  return MnistVAE(variant=variant, num_blocks=m.num_blocks, width=m.width,
                  lstm_hidden=m.lstm_hidden, latent_channels=m.latent_channels,
                  top_dim=m.top_dim)


def init_shapes(model):
  x = jnp.zeros((2, 28, 28, 1))
  eps1 = jnp.zeros((2, 3) + model.latent_shape)
  eps2 = jnp.zeros((2, 3, model.top_dim))
  return jax.eval_shape(model.init, jax.random.key(0), x, eps1, eps2)


@pytest.mark.parametrize("variant,t", [(v, 8) for v in VARIANTS] +
                         [("crvae", 4), ("crvae", 16)])
def test_paper_scale_parameter_count(variant, t):
  shapes = init_shapes(MnistVAE(variant=variant, num_blocks=t))
  count = sum(np.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))
  assert count == expected_paper_params(variant, t)


def test_crvae_has_15_5m_parameters():
  # The performance issue measured "paper-scale crVAE, 15.5 M parameters".
  assert round(expected_paper_params("crvae") / 1e6, 1) == 15.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes(variant, tiny_config):
  m = tiny_config.model
  model = tiny_model(variant, m)
  b, n = 3, 2
  x = jnp.ones((b, 28, 28, 1))
  eps1 = jnp.ones((b, n) + model.latent_shape)
  eps2 = jnp.ones((b, n, m.top_dim))
  variables = model.init(jax.random.key(0), x, eps1, eps2)
  out = model.apply(variables, x, eps1, eps2)
  assert out.recon_ll.shape == (b, n)
  assert out.kl_blocks.shape == (b, n, m.num_blocks)
  assert out.logits.shape == (b, n, 28, 28, 1)
  if variant == "crvae_2layer":
    assert out.kl_blocks_analytic is None
  else:
    assert out.kl_blocks_analytic.shape == (b, m.num_blocks)
    np.testing.assert_array_equal(out.kl_top, 0.0)
  prior = model.apply(variables, eps1[:, 0], eps2[:, 0], method=model.generate)
  assert prior.shape == (b, 28, 28, 1)
  assert np.all(np.isfinite(prior))


def test_channel_blocks_follow_design_order():
  # Block t must hold exactly channels t*C/T ... (t+1)*C/T - 1, at every position.
  b, h, w, c, t = 2, 4, 4, 16, 4
  a = jnp.broadcast_to(jnp.arange(c, dtype=jnp.float32), (b, h, w, c))
  seq = channel_recurrent.split_channel_blocks(a, t)  # [B, T, H*W*C/T]
  assert seq.shape == (b, t, h * w * c // t)
  for step in range(t):
    assert set(np.unique(seq[:, step])) == set(range(step * c // t, (step + 1) * c // t))
  back = channel_recurrent.merge_channel_blocks(seq, h, w)
  np.testing.assert_array_equal(back, a)


def test_recurrent_logvar_block_t_depends_only_on_feature_blocks_up_to_t():
  # The LSTM is causal over channel blocks: the log-variance of latent block t cannot
  # depend on feature channels of later blocks.
  t = 4
  head = channel_recurrent.ChannelRecurrentPosterior(num_blocks=t, latent_channels=8,
                                                     hidden=16)
  f = jax.random.normal(jax.random.key(0), (1, 4, 4, 32))
  v = head.init(jax.random.key(1), f)
  f2 = f.at[..., 24:].add(1.0)  # perturb feature block 3 only
  lv1, lv2 = head.apply(v, f).logvar, head.apply(v, f2).logvar
  np.testing.assert_allclose(lv1[..., :6], lv2[..., :6], rtol=0, atol=0)  # blocks 0-2
  assert not np.allclose(lv1[..., 6:], lv2[..., 6:])  # block 3 (channels 6, 7) moves


def naive_conv_transpose(x, kernel, stride, padding):
  """out[s*i + k - p] += x[i] * kernel[k] (the definition, as loops)."""
  b, h, w, _ = x.shape
  k = kernel.shape[0]
  full = np.zeros((b, (h - 1) * stride + k, (w - 1) * stride + k, kernel.shape[-1]))
  for i in range(h):
    for j in range(w):
      full[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          "bc,yxcd->byxd", x[:, i, j], kernel)
  return full[:, padding:full.shape[1] - padding, padding:full.shape[2] - padding]


@pytest.mark.parametrize("stride,padding,size,cin", [
    (2, 1, (4, 4), 3), (2, 1, (8, 8), 9), (2, 2, (16, 16), 3), (2, 0, (3, 3), 9),
    (2, 2, (5, 7), 4), (3, 1, (4, 6), 3)])
@pytest.mark.parametrize("form,chunk", [("auto", None), ("matmul", None), ("matmul", 1),
                                        ("phases", None), ("phases", 1)])
def test_conv_transpose_implementations_agree(stride, padding, size, cin, form, chunk,
                                               monkeypatch):
  # Each forward form on every size (form 'auto' picks by size in the model), in one
  # chunk and (chunk=1 byte) one image per chunk: a scan over the whole batch.
  if chunk is not None:
    monkeypatch.setattr(fast_conv, "_MATMUL_CHUNK_BYTES", chunk)
    monkeypatch.setattr(fast_conv, "_PHASE_CHUNK_BYTES", chunk)
  k = 2 * stride
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (4, *size, cin))
  kernel = jax.random.normal(kw, (k, k, cin, 5))
  ref = naive_conv_transpose(np.asarray(x, np.float64), np.asarray(kernel, np.float64),
                             stride, padding)
  fast = lambda x, w, s, p: fast_conv.conv_transpose2d(x, w, s, p, form)
  for fn in (fast, layers.conv_transpose_xla):
    np.testing.assert_allclose(fn(x, kernel, stride, padding), ref, rtol=1e-4, atol=1e-4)
  # Gradients agree too (the CPU form exists for its fast backward pass: dx and dW of
  # the adjoint strided conv).
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k, stride, padding)))
  g1 = jax.grad(loss(fast), argnums=(0, 1))(x, kernel)
  g2 = jax.grad(loss(layers.conv_transpose_xla), argnums=(0, 1))(x, kernel)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_transpose_form_is_checked():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((4, 4, 2, 3))
  with pytest.raises(ValueError, match="form must be one of"):
    fast_conv.conv_transpose2d(x, kernel, 2, 1, "winograd")


def test_lstm_forget_gate_bias_starts_at_one():
  layer = lstm.LSTMLayer(hidden=5)
  v = layer.init(jax.random.key(0), jnp.zeros((1, 3, 2)))
  bias = v["params"]["bias"]
  np.testing.assert_array_equal(bias[5:10], 1.0)
  np.testing.assert_array_equal(np.concatenate([bias[:5], bias[10:]]), 0.0)


def test_lstm_scan_matches_step_by_step_loop():
  layer = lstm.LSTMLayer(hidden=4)
  xs = jax.random.normal(jax.random.key(0), (2, 5, 3))
  v = layer.init(jax.random.key(1), xs)
  p = v["params"]
  c = h = jnp.zeros((2, 4))
  outs = []
  for t in range(5):
    (c, h), _ = lstm.lstm_cell((c, h), xs[:, t] @ p["input_kernel"] + p["bias"],
                               p["recurrent_kernel"])
    outs.append(h)
  np.testing.assert_allclose(layer.apply(v, xs), jnp.stack(outs, 1), rtol=1e-5, atol=1e-6)


def test_bounded_logvar_is_the_identity_inside_and_bounded_outside():
  bounded = channel_recurrent.bounded_logvar
  (lo, hi), (lo_limit, hi_limit) = (channel_recurrent.LOGVAR_LINEAR,
                                    channel_recurrent.LOGVAR_LIMIT)
  inside = jnp.linspace(lo, hi, 1001)
  np.testing.assert_array_equal(bounded(inside), inside)  # the paper's linear head
  raw = jnp.array([-jnp.inf, -1e30, -1e4, lo - 5, lo - 1, hi + 1, hi + 5, 1e4, 1e30,
                   jnp.inf])
  out = np.asarray(bounded(raw))
  assert np.all((out >= lo_limit) & (out <= hi_limit)), out
  assert np.all(np.diff(out) >= 0)  # monotone
  assert np.all(np.isfinite(np.exp(out))) and np.all(np.isfinite(np.exp(-out)))
  # C1 at the joints (slope 1 on both sides) and still rising beyond them.
  slope = jax.vmap(jax.grad(bounded))(
      jnp.array([lo - 1e-4, lo + 1e-4, hi - 1e-4, hi + 1e-4, lo - 3, hi + 1]))
  np.testing.assert_allclose(slope[:4], 1.0, atol=1e-3)
  assert np.all(slope[4:] > 0.05), slope


@pytest.mark.parametrize("variant", VARIANTS)
def test_extreme_logvar_heads_keep_loss_and_gradients_finite(variant, tiny_config):
  # A raw log-variance of +-1e4 (e.g. after a bad step) would give exp(logvar) = inf or
  # exp(-logvar) = inf without the bound; with it, loss and gradients stay finite.
  m = tiny_config.model
  model = tiny_model(variant, m)
  x = (jax.random.uniform(jax.random.key(1), (3, 28, 28, 1)) > 0.5).astype(jnp.float32)
  eps1 = jax.random.normal(jax.random.key(2), (3, 2) + model.latent_shape)
  eps2 = jax.random.normal(jax.random.key(3), (3, 2, m.top_dim))
  variables = model.init(jax.random.key(0), x, eps1, eps2)
  weights = jnp.ones((m.num_blocks,))

  @jax.jit
  def loss_and_grads(bias):
    def push_logvar_bias(path, leaf):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      return jnp.full_like(leaf, bias) if "logvar" in name and name.endswith("bias") else leaf

    def loss(p):
      out = model.apply({**variables, "params": p}, x, eps1, eps2)
      return objectives.elbo(out, weights).loss

    params = jax.tree_util.tree_map_with_path(push_logvar_bias, variables["params"])
    return jax.value_and_grad(loss)(params)

  names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in
           jax.tree_util.tree_leaves_with_path(variables["params"])]
  assert any("logvar" in n and n.endswith("bias") for n in names), names
  for bias in (1e4, -1e4):
    value, grads = loss_and_grads(bias)
    assert np.isfinite(value), (bias, value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), bias
