"""oneDNN convolutions on XLA's CPU backend (model.conv_impl='onednn').

XLA's CPU convolutions are slower than oneDNN's, the library PyTorch's CPU convs run on
(benchmarks/RESULTS.md, "Per layer on the AMD EPYC"). This module calls oneDNN's
forward, backward-data and backward-weights convolution primitives from compiled JAX
programs as XLA FFI custom calls (onednn_conv.cc), with a `jax.custom_vjp` tying them
together, for NHWC activations and HWIO kernels as `fast_conv` has them:

  conv2d(x, kernel, stride, padding)            == fast_conv.conv2d_xla
  conv_transpose2d(x, kernel, stride, padding)  == layers.conv_transpose_xla (Torch
      semantics): the adjoint of conv2d(., kernel^T), so its forward is oneDNN's
      backward-data and its backward the forward and backward-weights.

Limits: float32, square inputs and kernels, the same stride and padding on both axes
(every convolution of these models); other inputs get a clear error.

The shared library is compiled on first use with the system C++ compiler (``g++``)
against oneDNN 3's headers and library (the ``onednn-cpu-gomp`` wheels of
requirements.txt, found in this Python's environment, else under /usr or /usr/local)
and jaxlib's FFI headers, into ``$CRVAE_JAX_CACHE`` (default ``~/.cache/crvae_jax``),
keyed by a hash of the source, the compiler flags, the jaxlib version and the oneDNN
found (its path, version header and library). `load()` raises a RuntimeError naming
what is missing.

Under `jax.vmap` the calls run one batch element after another
(``vmap_method='sequential'``; the Stage1 completion vmaps the discriminator). Inside
`jax.shard_map` a replicated kernel's gradient is summed over the devices, as XLA's
own convolution's is.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from crvae_jax.models import fast_conv
from crvae_jax.models.fused_backward import cotangent_like

# Convs with fewer output channels keep fast_conv's matmul + shift-add form under
# 'onednn': for one output channel (MNIST's last conv) a quick check found it faster;
# at three (the RGB decoders' last conv) oneDNN's backward is several times faster
# (benchmarks/RESULTS.md); two channels (no model has them) go with three.
MIN_COUT = 2
_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"fwd": "CrvaeOnednnConvFwd", "bwd_data": "CrvaeOnednnConvBwdData",
            "bwd_weights": "CrvaeOnednnConvBwdWeights"}
_HEADER = "oneapi/dnnl/dnnl.hpp"
_CXXFLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("CRVAE_JAX_CACHE",
                                     pathlib.Path.home() / ".cache" / "crvae_jax"))


def _find_onednn() -> tuple[str, str] | None:
  """(include dir, library dir) of the first prefix with oneDNN's headers and libdnnl:
  this Python's environment (the pip wheels of requirements.txt), then /usr, /usr/local."""
  for prefix in (pathlib.Path(sys.prefix), pathlib.Path("/usr"), pathlib.Path("/usr/local")):
    if not (prefix / "include" / _HEADER).is_file():
      continue
    for lib in ("lib", "lib64", "lib/x86_64-linux-gnu"):
      if (prefix / lib / "libdnnl.so").exists():
        return str(prefix / "include"), str(prefix / lib)
  return None


def _build(out: pathlib.Path, include: str, libdir: str) -> None:
  cxx = os.environ.get("CXX", "g++")
  if shutil.which(cxx) is None:
    raise RuntimeError(f"conv_impl='onednn' needs a C++ compiler: {cxx!r} not found "
                       "(set CXX, or apt-get install g++)")
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_so = pathlib.Path(tmp) / out.name
    cmd = [cxx, *_CXXFLAGS, f"-I{jax.ffi.include_dir()}", f"-I{include}", str(_SOURCE), "-o",
           str(tmp_so), f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-ldnnl"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError("building the oneDNN convolutions failed:\n" + " ".join(cmd) +
                         "\n" + proc.stderr[-4000:])
    os.replace(tmp_so, out)  # atomic: a concurrent loader sees all of it or nothing


@functools.cache
def load() -> str:
  """Builds (once per source, flags, jaxlib and oneDNN) and registers the FFI targets;
  returns the library's path. Raises RuntimeError when it cannot be built or loaded."""
  try:
    return _load()
  except OSError as e:  # an unwritable cache, a missing file, a library that won't load
    raise RuntimeError(f"conv_impl='onednn': cannot build or load its library: {e}") from e


@functools.cache
def unavailable_reason() -> str | None:
  """None when the oneDNN convolutions can run here (the CPU backend, the library built
  and loaded, as `load()` does), else why not, in words; conv_impl='fastest' asks."""
  if jax.default_backend() != "cpu":
    return f"the {jax.default_backend()!r} backend is not the CPU's"
  try:
    load()
  except RuntimeError as e:
    return str(e)
  return None


def _load() -> str:
  import jaxlib
  found = _find_onednn()
  if found is None:
    raise RuntimeError(f"conv_impl='onednn' needs oneDNN's headers ({_HEADER}) and "
                       "libdnnl.so: pip install -r requirements.txt (the onednn-cpu-gomp "
                       "wheels)")
  include, libdir = found
  version_h = pathlib.Path(include) / "oneapi" / "dnnl" / "dnnl_version.h"
  library = os.path.realpath(os.path.join(libdir, "libdnnl.so"))
  digest = hashlib.sha256(b"\0".join([
      _SOURCE.read_bytes(), repr(_CXXFLAGS).encode(), jaxlib.__version__.encode(),
      include.encode(), library.encode(), version_h.read_bytes()]))
  so = _cache_dir() / f"onednn_conv-{digest.hexdigest()[:16]}.so"
  if not so.is_file():
    _build(so, include, libdir)
  lib = ctypes.cdll.LoadLibrary(str(so))
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f"crvae_onednn_conv_{name}",
                                jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return str(so)


def _pads(h: int, oh: int, k: int, s: int, p: int) -> dict:
  """oneDNN's padding attributes for an h -> oh conv with Torch padding p: the right
  pad is what makes (h + pad_l + pad_r - k) / s + 1 == oh exact."""
  return {"stride": np.int64(s), "pad_l": np.int64(p),
          "pad_r": np.int64((oh - 1) * s + k - h - p)}


def _call(name, out_shape, a, b, attrs):
  # Inside jax.shard_map (the data-parallel step) an ffi_call needs inputs that vary over
  # the same manual mesh axes, and its result type says which: cast both to the axes
  # either varies over (e.g. per-device activations with replicated kernels).
  varying = jax.typeof(a).mat.varying | jax.typeof(b).mat.varying
  a, b = (jax.lax.pcast(v, tuple(varying - jax.typeof(v).mat.varying), to="varying")
          for v in (a, b))
  result = jax.typeof(a).update(shape=tuple(out_shape), dtype=jnp.float32)
  return jax.ffi.ffi_call(f"crvae_onednn_conv_{name}", result,
                          vmap_method="sequential")(a, b, **attrs)


def _fwd(x, kernel, s, p):
  n, h, w, _ = x.shape
  k, _, _, co = kernel.shape
  oh, ow = fast_conv.conv_out_size(h, k, s, p), fast_conv.conv_out_size(w, k, s, p)
  return _call("fwd", (n, oh, ow, co), x, kernel, _pads(h, oh, k, s, p))


def _bwd_data(dy, kernel, x_hw, s, p):
  n, oh, _, _ = dy.shape
  k, _, ci, _ = kernel.shape
  return _call("bwd_data", (n, *x_hw, ci), dy, kernel, _pads(x_hw[0], oh, k, s, p))


def _bwd_weights(x, dy, k, s, p):
  h, ci, co = x.shape[1], x.shape[3], dy.shape[3]
  return _call("bwd_weights", (k, k, ci, co), x, dy, _pads(h, dy.shape[1], k, s, p))


def _check(x, kernel, stride, padding):
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise TypeError(f"conv_impl='onednn' computes in float32, got {x.dtype} inputs and "
                    f"a {kernel.dtype} kernel")
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]:
    raise ValueError(f"conv_impl='onednn' needs an input [N, H, W, C] and a kernel "
                     f"[K, K, C, Cout] with the same C, got {x.shape} and {kernel.shape}")
  if x.shape[1] != x.shape[2] or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f"conv_impl='onednn' needs square inputs and kernels, got input "
                     f"{x.shape} and kernel {kernel.shape}")
  if stride < 1 or padding < 0:
    raise ValueError(f"conv_impl='onednn' needs stride >= 1 and padding >= 0, got "
                     f"{stride} and {padding}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, stride=1, padding=0):
  """NHWC conv with symmetric padding in pixels; x [N,H,W,I], kernel [K,K,I,O]."""
  _check(x, kernel, stride, padding)
  load()
  return _fwd(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
  return conv2d(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, res, dy):
  x, kernel = res
  return (cotangent_like(_bwd_data(dy, kernel, x.shape[1:3], stride, padding), x),
          cotangent_like(_bwd_weights(x, dy, kernel.shape[0], stride, padding), kernel))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose2d(x, kernel, stride=2, padding=1):
  """Torch-semantics transposed conv, x [N,H,W,I], kernel [K,K,I,O] -> [N,(H-1)s+K-2p,.,O]:
  the adjoint of conv2d(., kernel^T [K,K,O,I], stride, padding)."""
  _check(x, kernel, stride, padding)
  load()
  k = kernel.shape[0]
  out = (x.shape[1] - 1) * stride + k - 2 * padding
  return _bwd_data(x, jnp.swapaxes(kernel, 2, 3), (out, out), stride, padding)


def _conv_transpose2d_fwd(x, kernel, stride, padding):
  return conv_transpose2d(x, kernel, stride, padding), (x, kernel)


def _conv_transpose2d_bwd(stride, padding, res, dy):
  x, kernel = res
  k = kernel.shape[0]
  dx = _fwd(dy, jnp.swapaxes(kernel, 2, 3), stride, padding)
  # d kernel^T = the adjoint conv's kernel gradient with input dy and output cotangent x.
  dkernel_t = _bwd_weights(dy, x, k, stride, padding)  # [K, K, O, I]
  return cotangent_like(dx, x), cotangent_like(jnp.swapaxes(dkernel_t, 2, 3), kernel)


conv_transpose2d.defvjp(_conv_transpose2d_fwd, _conv_transpose2d_bwd)
