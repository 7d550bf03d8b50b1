"""Convolutional building blocks shared by the encoders and decoders.

All layers are NHWC. Padding is given the way the paper's (Torch) release gives it, as
an explicit number of pixels, so that output sizes match the layer tables of docs/models.md.
"""

from typing import Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from crvae_jax.models import fast_conv
from crvae_jax.models import fused_backward as fused
from crvae_jax.models import onednn_conv

CONV_IMPLS = ("fastest", "auto", "cpu", "xla", "onednn")


def crelu(x: jax.Array) -> jax.Array:
  """Concatenated ReLU: relu(concat(x, -x)) along channels; doubles the channels."""
  return nn.relu(jnp.concatenate([x, -x], axis=-1))


def leaky_relu(x: jax.Array, slope: float = 0.1) -> jax.Array:
  return jnp.where(x >= 0, x, slope * x)


def resolve_conv_impl(impl: str) -> str:
  """Which kernels the (transposed) convolutions use: 'fastest' (the configs' default)
  picks 'onednn' where it runs (the CPU backend with its library built: g++ and the
  oneDNN wheels of requirements.txt), else what 'auto' picks; 'auto' picks 'cpu' on the
  CPU backend and 'xla' on GPU/TPU.

  'cpu': `fast_conv`'s transposed convs (a chunked sub-pixel or matmul + overlap-add
  forward and an adjoint-conv backward; XLA's CPU conv_transpose backward is far slower
  than its forward: benchmarks/RESULTS.md, section "Where the rest is"), its matmul +
  shift-add form for convs with Cout < 8, and `crvae_jax.compiled.compiler_options`
  (XLA's own CPU conv kernels rather than YNNPACK's); 'xla': the plain XLA ops, which
  cuDNN/TPU run natively; 'onednn' (CPU only): oneDNN's convolutions through XLA FFI
  custom calls (`onednn_conv`; the library PyTorch's CPU convs use), the matmul +
  shift-add form for Cout = 1, and the 'cpu' compiler options for everything else.
  All give the same numbers to float rounding (tests/test_models.py, test_fast_conv.py,
  test_onednn_conv.py). A training run records the kernels 'fastest' picked in its
  config.json (`checkpoints.settle_kernels`), so that its resume runs the same ones.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
  if impl == "fastest":
    if jax.default_backend() != "cpu":
      return "xla"
    reason = onednn_conv.unavailable_reason()
    if reason is None:
      return "onednn"
    _warn_once(f"model.conv_impl='fastest' runs conv_impl 'cpu' here, not 'onednn': "
               f"{reason}")
    return "cpu"
  if impl == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  if impl == "onednn" and jax.default_backend() != "cpu":
    raise ValueError("model.conv_impl='onednn' runs on the CPU backend only, not on "
                     f"{jax.default_backend()!r}: use 'fastest', 'auto' or 'xla' there")
  return impl


def kernels_label(conv_impl: str, fused_backward: bool) -> str:
  """'conv onednn + fused backward', 'conv cpu', ...: the kernels a model runs here
  (conv_impl resolved), for log and machine lines."""
  return f"conv {resolve_conv_impl(conv_impl)}" + (" + fused backward" if fused_backward
                                                   else "")


_WARNED = set()


def _warn_once(message: str) -> None:
  if message not in _WARNED:
    _WARNED.add(message)
    logging.warning(message)


def conv_transpose_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: int):
  """Torch-semantics transposed convolution via XLA's dilated convolution.

  out[s*i + k - p] += x[i] * kernel[k]; output size (H-1)*s + K - 2p.
  kernel: [K, K, Cin, Cout].
  """
  k = kernel.shape[0]
  pad = k - 1 - padding
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], window_strides=(1, 1), padding=[(pad, pad), (pad, pad)],
      lhs_dilation=(stride, stride), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_transpose_with_impl(impl: str, x, kernel, stride: int, padding: int):
  """The Torch-semantics transposed conv by conv_impl `impl`'s kernels."""
  impl = resolve_conv_impl(impl)
  if impl == "cpu":
    return fast_conv.conv_transpose2d(x, kernel, stride, padding)
  if impl == "onednn":
    return onednn_conv.conv_transpose2d(x, kernel, stride, padding)
  return conv_transpose_xla(x, kernel, stride, padding)


class ConvTranspose(nn.Module):
  """Transposed convolution with Torch padding semantics and a selectable kernel.

  Every implementation shares the parameter layout ([K, K, Cin, Cout], no bias: every
  deconvolution in the paper is followed by BatchNorm); they agree to float rounding.
  """
  features: int
  kernel_size: int = 4
  stride: int = 2
  padding: int = 1
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
        (self.kernel_size, self.kernel_size, cin, self.features))
    return conv_transpose_with_impl(self.impl, x, kernel, self.stride, self.padding)


def batch_norm(train: bool, axis_name: Optional[str], name: Optional[str] = None,
               fused_backward: bool = False):
  """BatchNorm with Torch's defaults (momentum 0.1 == Flax 0.9, eps 1e-5); statistics
  are averaged over `axis_name` (the device axis) when training data-parallel.
  fused_backward: `layers.BatchNorm` (same variables and values; hand-written backward)."""
  module = BatchNorm if fused_backward else nn.BatchNorm
  return module(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                axis_name=axis_name if train else None, name=name)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis (its variables: params scale/bias, batch_stats
  mean/var; its arithmetic) whose training-mode backward is
  `fused_backward.batch_norm_train`'s. Named as Flax's, so that unnamed instances get
  the same names ('BatchNorm_0', ...) and checkpoints load with either."""
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    if self.use_running_average:
      return (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    init = self.is_initializing()  # as nn.BatchNorm: no device axis at initialisation
    y, mean, var = fused.batch_norm_train(x, scale, bias, self.epsilon,
                                          None if init else self.axis_name)
    if not init:
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
    return y


def conv_with_impl(impl: str, x, kernel, stride: int, padding: int):
  """The NHWC conv with symmetric padding by conv_impl `impl`'s kernels ('onednn' keeps
  fast_conv's matmul + shift-add form for Cout < onednn_conv.MIN_COUT, faster there)."""
  impl = resolve_conv_impl(impl)
  if impl == "onednn" and kernel.shape[-1] >= onednn_conv.MIN_COUT:
    return onednn_conv.conv2d(x, kernel, stride, padding)
  if impl in ("cpu", "onednn"):
    return fast_conv.conv2d(x, kernel, stride, padding)
  return fast_conv.conv2d_xla(x, kernel, stride, padding)


class Conv(nn.Module):
  """Convolution with symmetric padding in pixels (Torch style) and selectable kernels.

  Parameters are laid out as in `nn.Conv` ('kernel' [K, K, Cin, Cout], 'bias' [Cout]).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = False
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    k, p, s = self.kernel_size, self.padding, self.stride
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features))
    y = conv_with_impl(self.impl, x, kernel, s, p)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0,
         use_bias: bool = False, name: Optional[str] = None, impl: str = "auto") -> Conv:
  return Conv(features, kernel, stride, padding, use_bias, impl, name=name)
