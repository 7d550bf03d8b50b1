"""Importance-sampled negative log-likelihood (docs/likelihood.md).

  -log p(x) ~= -logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)],  z_k ~ q(z|x)

(for two stochastic layers the proposal is q(z1|x) q(z2|z1)). Per image, the K samples
are drawn in chunks inside one `lax.fori_loop` that keeps a running log-sum-exp, so memory
is bounded by the chunk size, not by K. Sample k of image i uses
fold_in(fold_in(seed, i), k): the result does not depend on chunk size, batch size or
device count. BatchNorm runs in inference mode. Images are split over all devices; the
last batch is padded and the padding removed, so every image is scored.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from crvae_jax import objectives, randomness
from crvae_jax.sharding import BATCH_AXIS, data_parallel, global_indices, map_batches, replicate


class LikelihoodResult(NamedTuple):
  """Per-image log-likelihood estimates in nats (higher is better), each [N]."""
  elbo: np.ndarray  # mean over the K samples of log w_k: an estimate of the ELBO
  log_px_k1: np.ndarray  # log w_1: the first sample alone (the K = 1 bound)
  log_px_report: np.ndarray  # logmeanexp over the first `report_k` samples
  log_px: np.ndarray  # logmeanexp over all K samples
  num_samples: int
  report_k: int


def _accumulate(acc, log_w, mask):
  """Running (max, sum exp(. - max)) log-sum-exp over masked-in entries of log_w [b, c]."""
  m, s = acc
  log_w = jnp.where(mask, log_w, -jnp.inf)
  new_m = jnp.maximum(m, log_w.max(-1))
  s = s * jnp.exp(m - new_m) + jnp.exp(log_w - new_m[:, None]).sum(-1)
  return new_m, s


def stream_log_weights(log_weights_of, zeros, *, num_samples: int, chunk_size: int,
                       report_k: int):
  """[b, 4] estimates (elbo, k1, report_k, K) from K = num_samples log weights per image,
  drawn `chunk_size` at a time: `log_weights_of(ids [chunk]) -> [b, chunk]`.

  The last chunk may run past K (when chunk_size does not divide K); its extra samples are
  masked out of every estimate, including the report_k one when report_k > K.
  zeros: [b] zeros that carry the batch's sharding (the accumulators start from them).
  """
  num_chunks = math.ceil(num_samples / chunk_size)
  neg_inf = jnp.full(zeros.shape, -jnp.inf)

  def body(c, carry):
    acc_all, acc_report, total, first = carry
    ids = c * chunk_size + jnp.arange(chunk_size)  # [chunk] sample indices
    log_w = log_weights_of(ids)  # [b, chunk]
    valid = ids < num_samples
    acc_all = _accumulate(acc_all, log_w, valid[None])
    acc_report = _accumulate(acc_report, log_w, (valid & (ids < report_k))[None])
    total = total + jnp.where(valid[None], log_w, 0.0).sum(-1)
    first = jnp.where(c == 0, log_w[:, 0], first)
    return acc_all, acc_report, total, first

  init = ((neg_inf + zeros, zeros), (neg_inf + zeros, zeros), zeros, zeros)
  (m, s), (mr, sr), total, first = jax.lax.fori_loop(0, num_chunks, body, init)
  log_px = m + jnp.log(s) - math.log(num_samples)
  log_px_report = mr + jnp.log(sr) - math.log(min(report_k, num_samples))
  return jnp.stack([total / num_samples, first, log_px_report, log_px], axis=-1)


def _estimate_per_device(variables, images_binary, offset, seed_key, *, model,
                         num_samples: int, chunk_size: int, report_k: int):
  """images_binary [b, 28, 28] -> [b, 4]: elbo, k1, report_k and K estimates."""
  b = images_binary.shape[0]
  x = images_binary[..., None].astype(jnp.float32)  # [b, 28, 28, 1]
  keys = randomness.example_keys(seed_key, offset + global_indices(b))
  posterior = model.apply(variables, x, method=model.encode)

  def log_weights_of(ids):  # [chunk] sample indices -> [b, chunk]
    eps1, eps2 = randomness.latent_noise(keys, ids, model.latent_shape, model.top_dim)
    out = model.apply(variables, x, posterior, eps1, eps2, method=model.sample_terms)
    return objectives.log_weights(out)

  # Accumulators start from the data so they carry the batch sharding (shard_map vma).
  return stream_log_weights(log_weights_of, jnp.zeros_like(x[:, 0, 0, 0]),
                            num_samples=num_samples, chunk_size=chunk_size,
                            report_k=report_k)


def make_estimator(model, mesh, *, num_samples: int, chunk_size: int, report_k: int = 100):
  """Jitted `f(variables, images_binary [B, 28, 28], offset, seed_key) -> [B, 4]`."""
  chunk_size = min(chunk_size, num_samples)
  per_device = functools.partial(_estimate_per_device, model=model,
                                 num_samples=num_samples, chunk_size=chunk_size,
                                 report_k=report_k)
  return data_parallel(per_device, mesh, (P(), P(BATCH_AXIS), P(), P()), P(BATCH_AXIS),
                       model=model)


def estimate_log_likelihood(model, variables, images_binary: np.ndarray, mesh, *,
                            num_samples: int, chunk_size: int = 128,
                            batch_size: int = 100, report_k: int = 100, seed: int = 0,
                            progress: bool = True) -> LikelihoodResult:
  """Importance-sampled log p(x) for every image in images_binary [N, 28, 28] {0, 1}.

  Args:
    model: an `MnistVAE`; variables: {'params', 'batch_stats'} (BN in inference mode).
    num_samples: K importance samples per image (10,000 in the paper).
    chunk_size: samples decoded at once per image (memory ~ batch/devices * chunk).
    batch_size: images per call, rounded up to a multiple of the device count.
    report_k: the smaller K also reported (100); seed: the estimate's seed.
  """
  if num_samples < 1 or chunk_size < 1 or batch_size < 1:
    raise ValueError("num_samples, chunk_size and batch_size must be >= 1, got "
                     f"{num_samples}, {chunk_size}, {batch_size}")
  estimator = make_estimator(model, mesh, num_samples=num_samples,
                             chunk_size=chunk_size, report_k=report_k)
  variables, seed_key = replicate(mesh, variables), jax.random.key(seed)
  with tqdm(total=len(images_binary), unit="img", desc=f"IS-NLL K={num_samples}",
            disable=not progress) as bar:
    per_image = map_batches(lambda b, off: estimator(variables, b, off, seed_key),
                            images_binary, mesh, batch_size, progress=bar)  # [N, 4]
  elbo, k1, report, full = per_image.T
  return LikelihoodResult(elbo, k1, report, full, num_samples, min(report_k, num_samples))
