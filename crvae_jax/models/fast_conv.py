"""CPU-friendly NHWC convolutions and transposed convolutions (conv_impl='cpu').

Each function computes exactly the plain op (``lax.conv_general_dilated``; a
Torch-semantics transposed conv) to float rounding. They are fast when compiled with
`compiled.compiler_options` (XLA's own CPU conv kernels instead of YNNPACK's), as every
train step and evaluator of this package is:

:func:`conv2d`: XLA's conv and its autodiff gradients, except for Cout < 8 (the decoders'
  last conv), where one matmul to the K*K taps and a sum of shifted slices is faster
  both ways.
:func:`conv_transpose2d`: XLA's conv_transpose backward pass is far slower than its
  forward on CPU and its forward writes a dilated input. Here the forward runs in a
  scan over batch chunks, each chunk either as one 2x2 conv to all output phases plus a
  pixel shuffle (inputs of 8x8 and up) or as a matmul + overlap-add (4x4 inputs). The
  backward pass uses that the transposed conv is the adjoint of a strided conv: dX is
  that conv of the cotangent and dW its kernel gradient, both XLA's own fast kernels.

Measured by ``benchmarks/layers_vs_torch.py`` (per layer) and ``compare_torch.py`` (model):
benchmarks/RESULTS.md, sections "Where the rest is" and "JAX vs PyTorch on the same model
and CPU"; why these kernels: docs/cpu_tuning.md.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_DN = ('NHWC', 'HWIO', 'NHWC')
SMALL_COUT = 8  # convs with Cout < this use the matmul + shift-add form
# Transposed convs: inputs with H*W >= _PHASE_MIN_PIXELS use the sub-pixel form, smaller
# ones the matmul form; each in batch chunks of about this many bytes of intermediate.
_PHASE_MIN_PIXELS = 64
_PHASE_CHUNK_BYTES = 32 * 2**20  # the sub-pixel form's conv output
_MATMUL_CHUNK_BYTES = 5 * 2**19  # the matmul form's matmul output (~2.5 MB, in cache)
CONV_TRANSPOSE_FORMS = ("auto", "phases", "matmul")


def conv_out_size(n, k, stride, padding):
  """Output size of a conv over n pixels (kernel k, symmetric padding in pixels)."""
  return (n + 2 * padding - k) // stride + 1


def _chunk_size(batch, rows_per_sample, cols, itemsize, target):
  """Largest divisor g of `batch` whose chunk (g*rows x cols) fits `target` bytes."""
  g = max(1, target // max(1, rows_per_sample * cols * itemsize))
  g = min(g, batch)
  while batch % g:
    g -= 1
  return g


def conv2d_xla(x, kernel, stride, padding):
  """The plain NHWC conv (`conv2d`'s reference; conv_impl 'xla' runs it)."""
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), [(padding, padding)] * 2,
      dimension_numbers=_DN)


def _conv_shift_add(x, kernel, stride, padding):
  """Conv for tiny Cout: one matmul to all K*K taps, then a sum of shifted slices.

  taps[b, y, x, i, j] = x[b, y, x] @ kernel[i, j] is only K*K*Cout channels wide, so
  the slices are cheap; plain autodiff of this form is also fast (its backward is the
  same pads and slices on the small tensor plus two matmuls).  -> [B, Ho, Wo, Cout]
  """
  b, h, w, cin = x.shape
  k, cout = kernel.shape[0], kernel.shape[-1]
  ho, wo = conv_out_size(h, k, stride, padding), conv_out_size(w, k, stride, padding)
  wmat = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)  # [Cin, (i, j, Cout)]
  taps = (x.reshape(b * h * w, cin) @ wmat).reshape(b, h, w, k, k, cout)
  p = padding
  taps = jnp.pad(taps, ((0, 0), (p, p), (p, p), (0, 0), (0, 0), (0, 0)))
  span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
  # y[b, y, x] = sum_{i, j} taps_padded[b, s*y + i, s*x + j, i, j]
  return sum(taps[:, i:i + span_h:stride, j:j + span_w:stride, i, j]
             for i in range(k) for j in range(k))


def conv2d(x, kernel, stride=1, padding=0):
  """NHWC convolution with fast CPU forward and backward passes.

  Args:
    x: [B, H, W, Cin] input.
    kernel: [K, K, Cin, Cout] (HWIO) kernel.
    stride: int, same along H and W.
    padding: int, symmetric zero padding in pixels along H and W.
  Returns:
    [B, Ho, Wo, Cout] with Ho = (H + 2*padding - K) // stride + 1, equal to
    ``lax.conv_general_dilated(x, kernel, (stride, stride),
    [(padding, padding)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))``.
  """
  if kernel.shape[-1] < SMALL_COUT:
    return _conv_shift_add(x, kernel, stride, padding)
  return conv2d_xla(x, kernel, stride, padding)


def _overlap_add(cols, stride, padding):
  """cols [g, H, W, 2, s, 2, s, C] (one matmul row per input pixel: kernel offset
  k = s*q + r along each axis) -> the transposed conv's output [g, Ho, Wo, C]."""
  g, h, w, _, s, _, _, c = cols.shape
  full = 0.0
  for qy in (0, 1):
    for qx in (0, 1):
      part = cols[:, :, :, qy, :, qx, :, :]  # [g, H, W, ry, rx, C]
      full = full + jnp.pad(part, ((0, 0), (qy, 1 - qy), (qx, 1 - qx),
                                   (0, 0), (0, 0), (0, 0)))
  # [g, H+1, W+1, ry, rx, C] -> [g, (H+1)*s, (W+1)*s, C]
  full = full.transpose(0, 1, 3, 2, 4, 5).reshape(g, (h + 1) * s, (w + 1) * s, c)
  p = padding
  return full[:, p:full.shape[1] - p, p:full.shape[2] - p, :]


def _phases_chunk(xc, kernel, stride, padding):
  """Sub-pixel form of the transposed conv for K = 2s on one chunk: one ordinary 2x2
  conv (XLA's kernel) computes all s*s output phases, then a pixel shuffle interleaves
  them.

  With k = s*q + r, the full (uncropped) output row s*m + r receives
  x[m] * kernel[r] + x[m-1] * kernel[s + r], m in [0, H]: a 2-tap correlation over x
  padded by one pixel on each side with taps [kernel[s + r], kernel[r]].  -> [g, Ho, Wo, C]
  """
  _, _, cin, cout = kernel.shape
  s, (g, h, w, _) = stride, xc.shape
  # [q_y, r_y, q_x, r_x, Cin, Cout], tap t = 1 - q -> [t_y, t_x, Cin, (r_y, r_x, Cout)]
  taps = kernel.reshape(2, s, 2, s, cin, cout)[::-1, :, ::-1]
  taps = taps.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, s * s * cout)
  xp = jnp.pad(xc, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [g, H+2, W+2, Cin]
  y = lax.conv_general_dilated(xp, taps, (1, 1), "VALID", dimension_numbers=_DN)
  # [g, H+1, W+1, (r_y, r_x, Cout)] -> [g, (H+1)*s, (W+1)*s, Cout]
  y = y.reshape(g, h + 1, w + 1, s, s, cout).transpose(0, 1, 3, 2, 4, 5)
  y = y.reshape(g, (h + 1) * s, (w + 1) * s, cout)
  p = padding
  return y[:, p:y.shape[1] - p, p:y.shape[2] - p, :]


def _matmul_chunk(xc, kernel, stride, padding):
  """Matmul-and-overlap-add form of the transposed conv for K = 2s on one chunk: one
  matmul [g*H*W, Cin] x [Cin, K*K*Cout] to every kernel offset, then `_overlap_add`.
  -> [g, Ho, Wo, Cout]"""
  k, _, cin, cout = kernel.shape
  s, (g, h, w, _) = stride, xc.shape
  weight = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)  # [Cin, K*K*Cout]
  cols = (xc.reshape(g * h * w, cin) @ weight).reshape(g, h, w, 2, s, 2, s, cout)
  return _overlap_add(cols, s, padding)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose2d(x, kernel, stride=2, padding=1, form="auto"):
  """Torch-semantics transposed convolution (``out[s*i + k - p] += x[i] * kernel[k]``,
  output size (H-1)*s + K - 2p) with CPU-friendly forward and backward passes.

  Requires K == 2 * stride (every deconvolution in the paper: 4x4, stride 2).
  Forward: a scan over batch chunks, each chunk in one of two forms (`form` 'auto'
  picks by input size, the rule measured in benchmarks/RESULTS.md, "Transposed
  convolutions: two forward forms"; 'phases' and 'matmul' force one):
  - H*W >= _PHASE_MIN_PIXELS (8x8 and larger in these models): the sub-pixel form
    (`_phases_chunk`): one 2x2 conv to all s*s output phases and a pixel shuffle. Its
    intermediate holds (H+1)(W+1)s^2 pixels, against H*W*s^2 before the crop of p.
    Chunks of about _PHASE_CHUNK_BYTES of conv output.
  - smaller inputs (4x4): the matmul form (`_matmul_chunk`): one matmul to every
    kernel offset (an intermediate of K*K = 4s^2 values per input pixel) and an
    overlap-add; there the sub-pixel form's one-pixel border would add (5/4)^2 of the
    work. Chunks of about _MATMUL_CHUNK_BYTES of matmul output, which stays in cache.
  Backward: the transposed conv is the adjoint of ``conv(., kernel^T, s, p)``, so dX is
  that strided conv of the cotangent and dW its kernel gradient (XLA's kernels).

  Args:
    x: [B, H, W, Cin]; kernel: [K, K, Cin, Cout]; stride, padding: ints; form: one of
    CONV_TRANSPOSE_FORMS.
  Returns:
    [B, (H-1)*s + K - 2p, (W-1)*s + K - 2p, Cout].
  """
  k, _, _, cout = kernel.shape
  if k != 2 * stride:
    raise ValueError(f"conv_transpose2d needs kernel == 2*stride, got {k} and {stride}")
  if form not in CONV_TRANSPOSE_FORMS:
    raise ValueError(f"conv_transpose2d form must be one of {CONV_TRANSPOSE_FORMS}, "
                     f"got {form!r}")
  b, h, w, cin = x.shape
  if form == "auto":
    form = "phases" if h * w >= _PHASE_MIN_PIXELS else "matmul"
  if form == "phases":  # per image: [(H+1)*(W+1) rows, s*s*Cout] of conv output
    chunk, target = _phases_chunk, _PHASE_CHUNK_BYTES
    rows, cols = (h + 1) * (w + 1), stride * stride * cout
  else:  # per image: [H*W rows, K*K*Cout] of matmul output
    chunk, target, rows, cols = _matmul_chunk, _MATMUL_CHUNK_BYTES, h * w, k * k * cout
  g = _chunk_size(b, rows, cols, x.dtype.itemsize, target)
  _, y = lax.scan(lambda _, xc: (None, chunk(xc, kernel, stride, padding)), None,
                  x.reshape(b // g, g, h, w, cin))  # [B/g, g, Ho, Wo, Cout]
  return y.reshape(b, *y.shape[2:])


def _conv_transpose2d_fwd(x, kernel, stride, padding, form):
  return conv_transpose2d(x, kernel, stride, padding, form), (x, kernel)


def _conv_transpose2d_bwd(stride, padding, form, res, dy):
  del form  # the backward pass is the same for both forward forms
  x, kernel = res  # x: [B, H, W, Cin], kernel: [K, K, Cin, Cout]; dy: [B, Ho, Wo, Cout]
  # The transposed conv is the adjoint of conv(., kernel^T, stride, padding):
  #   dx = conv(dy, kernel^T)  and  dW^T = that conv's kernel gradient for cotangent x.
  kernel_t = kernel.transpose(0, 1, 3, 2)  # [K, K, Cout, Cin]
  dx, kernel_vjp = jax.vjp(lambda kt: conv2d_xla(dy, kt, stride, padding), kernel_t)
  dw_t, = kernel_vjp(x)  # [K, K, Cout, Cin]
  return dx.astype(x.dtype), dw_t.transpose(0, 1, 3, 2).astype(kernel.dtype)


conv_transpose2d.defvjp(_conv_transpose2d_fwd, _conv_transpose2d_bwd)
