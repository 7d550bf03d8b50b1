"""CPU-friendly NHWC convolutions and transposed convolutions (conv_impl='cpu').

On CPU, XLA's own gradients of these ops are slow: an NHWC conv's kernel gradient (dW)
is lowered to a convolution whose "kernel" is the whole HxW cotangent, and
conv_transpose's backward pass is 30-50x slower than its forward. Each function here
computes exactly the plain op (``lax.conv_general_dilated``; a Torch-semantics
transposed conv) to float rounding, with:

:func:`conv2d`
* dW: ``lax.scan`` over small batch chunks; per chunk, an im2col matrix is built from
  the K*K shifted (strided) slices of the padded input and multiplied by the
  cotangent. The chunk is sized so the im2col matrix stays cache-sized (~2.5 MB), which
  avoids materialising the K*K-times larger full-batch im2col tensor.
* dX: a plain XLA convolution of the cotangent with the spatially flipped,
  in/out-transposed kernel (``lhs_dilation=stride`` for strided convs).
* forward: XLA's conv, except for Cout < 8 (the decoders' last conv), where one matmul
  to the K*K taps and a sum of shifted slices is several times faster both ways.

:func:`conv_transpose2d`: a chunked matmul + overlap-add forward; the backward pass
shares one chunked im2col of the cotangent between dX and dW.

Measured speed-ups: ``benchmarks/layers_vs_torch.py`` and ``conv_layers.py``.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_DN = ('NHWC', 'HWIO', 'NHWC')
_CHUNK_BYTES = 5 * 2**19  # target size of one im2col chunk (~2.5 MB)
_SMALL_COUT = 8  # convs with Cout < this use the matmul + shift-add form


def _out_size(n, k, stride, padding):
  return (n + 2 * padding - k) // stride + 1


def _chunk_size(batch, rows_per_sample, cols, itemsize):
  """Largest divisor g of `batch` whose im2col chunk (g*rows x cols) fits."""
  g = max(1, _CHUNK_BYTES // max(1, rows_per_sample * cols * itemsize))
  g = min(g, batch)
  while batch % g:
    g -= 1
  return g


def _patches(xp, k, stride, ho, wo):
  """im2col of a padded chunk.

  xp: [g, Hp, Wp, Cin] (already padded) -> [g, ho, wo, k*k*Cin], with the
  last axis ordered (kh, kw, cin) to match ``kernel.reshape(k*k*Cin, Cout)``.
  """
  span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
  return jnp.concatenate(
      [xp[:, i:i + span_h:stride, j:j + span_w:stride]
       for i in range(k) for j in range(k)], axis=-1)


def _chunked(x, k, stride, padding, ho, wo, extra, fn):
  """Pads x, splits the batch into chunks and scans `fn` over them.

  x: [B, H, W, Cin]; `extra`: tensors [B, ...] chunked alongside x.
  fn(carry, (cols [g, ho, wo, k*k*Cin], *extra_chunks)) -> (carry, out).
  Returns (scan body, scan inputs [B/g, g, ...]) for ``lax.scan``.
  """
  b, _, _, cin = x.shape
  g = _chunk_size(b, ho * wo, k * k * cin, x.dtype.itemsize)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  xs = xp.reshape(b // g, g, *xp.shape[1:])
  es = tuple(e.reshape(b // g, g, *e.shape[1:]) for e in extra)

  def body(carry, chunk):
    return fn(carry, (_patches(chunk[0], k, stride, ho, wo),) + chunk[1:])
  return body, (xs,) + es


def _conv_xla(x, kernel, stride, padding):
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
  ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
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
  if kernel.shape[-1] < _SMALL_COUT:
    return _conv_shift_add(x, kernel, stride, padding)
  return _conv2d_custom(x, kernel, stride, padding)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_custom(x, kernel, stride, padding):
  """XLA's conv forward; the custom backward below."""
  return _conv_xla(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return _conv2d_custom(x, kernel, stride, padding), (x, kernel)


def _kernel_grad(x, dy, k, stride, padding):
  """dW [K, K, Cin, Cout] of conv(x [B, H, W, Cin], stride, padding) for cotangent
  dy [B, Ho, Wo, Cout], as a scan of chunked im2col matmuls."""
  cin, cout = x.shape[-1], dy.shape[-1]
  ho, wo = dy.shape[1], dy.shape[2]

  # dW[(i, j, c), d] = sum_{b, y, x} xpad[b, s*y+i, s*x+j, c] * dy[b, y, x, d]
  def dw_step(acc, chunk):
    cols, dyc = chunk  # [g, ho, wo, k*k*Cin], [g, ho, wo, Cout]
    return acc + jnp.einsum('bhwk,bhwd->kd', cols, dyc), None
  body, xs = _chunked(x, k, stride, padding, ho, wo, (dy,), dw_step)
  # zeros_like(x, ...) keeps x's device variance, so this also runs inside shard_map.
  dw, _ = lax.scan(body, jnp.zeros_like(x, shape=(k * k * cin, cout)), xs)
  return dw.reshape(k, k, cin, cout)


def _conv2d_bwd(stride, padding, res, dy):
  x, kernel = res  # x: [B, H, W, Cin], kernel: [K, K, Cin, Cout]
  h, w = x.shape[1], x.shape[2]
  k = kernel.shape[0]
  dw = _kernel_grad(x, dy, k, stride, padding).astype(kernel.dtype)

  # dX = transposed conv: dilate dy by the stride, pad by K-1-p (plus the rows
  # /cols the strided forward dropped), correlate with the flipped kernel.
  wt = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # [K, K, Cout, Cin]
  lo = k - 1 - padding
  pads = [(lo, lo + (n + 2 * padding - k) % stride) for n in (h, w)]
  dx = lax.conv_general_dilated(dy, wt, (1, 1), pads, lhs_dilation=(stride,) * 2,
                                dimension_numbers=_DN)
  return dx.astype(x.dtype), dw


_conv2d_custom.defvjp(_conv2d_fwd, _conv2d_bwd)


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


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose2d(x, kernel, stride=2, padding=1):
  """Torch-semantics transposed convolution (``out[s*i + k - p] += x[i] * kernel[k]``,
  output size (H-1)*s + K - 2p) with CPU-friendly forward and backward passes.

  Requires K == 2 * stride (every deconvolution in the paper: 4x4, stride 2).
  Forward: a scan over cache-sized batch chunks; per chunk one matmul
  [g*H*W, Cin] x [Cin, K*K*Cout] followed by an overlap-add. Writing the kernel offset
  k = s*q + r (q in {0, 1}), the full output row s*(i + q) + r receives
  x[i] * kernel[k], so the overlap-add is a sum of two shifted copies per axis and a
  pixel shuffle. Chunking keeps the K*K-times larger matmul output in cache: on the
  paper's 16x16 128->64 layer the unchunked form spent most of its time writing and
  re-reading it.
  Backward: the transposed conv is the adjoint of ``conv2d(., kernel^T, s, p)``, so
  dX is that strided conv of the cotangent and dW its kernel gradient; both are
  matmuls of the same chunked im2col of the cotangent, built once per chunk.

  Args:
    x: [B, H, W, Cin]; kernel: [K, K, Cin, Cout]; stride, padding: ints.
  Returns:
    [B, (H-1)*s + K - 2p, (W-1)*s + K - 2p, Cout].
  """
  k, _, cin, cout = kernel.shape
  s = stride
  if k != 2 * s:
    raise ValueError(f"conv_transpose2d needs kernel == 2*stride, got {k} and {s}")
  b, h, w, _ = x.shape
  weight = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)  # [Cin, K*K*Cout]
  g = _chunk_size(b, h * w, k * k * cout, x.dtype.itemsize)

  def body(_, xc):  # xc: [g, H, W, Cin]
    cols = (xc.reshape(g * h * w, cin) @ weight).reshape(g, h, w, 2, s, 2, s, cout)
    return None, _overlap_add(cols, s, padding)
  _, y = lax.scan(body, None, x.reshape(b // g, g, h, w, cin))  # [B/g, g, Ho, Wo, C]
  return y.reshape(b, *y.shape[2:])


def _conv_transpose2d_fwd(x, kernel, stride, padding):
  return conv_transpose2d(x, kernel, stride, padding), (x, kernel)


def _conv_transpose2d_bwd(stride, padding, res, dy):
  x, kernel = res  # x: [B, H, W, Cin], kernel: [K, K, Cin, Cout]; dy: [B, Ho, Wo, Cout]
  b, h, w, cin = x.shape
  k, cout = kernel.shape[0], kernel.shape[-1]
  # The transposed conv is the adjoint of conv2d(., kernel^T, stride, padding), so
  # with cols = im2col(dy) [g, H, W, (kh, kw, Cout)] (that conv's patches):
  #   dx[i]                = cols[i] @ kernel^T      (that conv's forward)
  #   dW[(kh, kw, cout), cin] = sum_i cols[i]^T x[i]  (its kernel gradient, cotangent x)
  # One scan over batch chunks builds each chunk's cols once for both.
  kmat = kernel.transpose(0, 1, 3, 2).reshape(k * k * cout, cin)  # [(kh, kw, Cout), Cin]

  def step(acc, chunk):
    cols, xc = chunk  # [g, H, W, K*K*Cout], [g, H, W, Cin]
    return acc + jnp.einsum('bhwk,bhwc->kc', cols, xc), cols @ kmat
  body, xs = _chunked(dy, k, stride, padding, h, w, (x,), step)
  dw, dx = lax.scan(body, jnp.zeros_like(x, shape=(k * k * cout, cin)), xs)
  dw = dw.reshape(k, k, cout, cin).transpose(0, 1, 3, 2)  # [K, K, Cin, Cout]
  return dx.reshape(b, h, w, cin).astype(x.dtype), dw.astype(kernel.dtype)


conv_transpose2d.defvjp(_conv_transpose2d_fwd, _conv_transpose2d_bwd)
