"""Importance-sampled negative log-likelihood (docs/likelihood.md).

  -log p(x) ~= -logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)],  z_k ~ q(z|x)

(for two stochastic layers the proposal is q(z1|x) q(z2|z1)). Per image, the K samples
are drawn in chunks inside one `lax.fori_loop` that keeps a running log-sum-exp, so memory
is bounded by the chunk size, not by K. Sample k of image i uses
fold_in(fold_in(seed, i), k): the result does not depend on chunk size, batch size or
device count. BatchNorm runs in inference mode. Images are split over all devices; the
last batch is padded and the padding removed, so every image is scored.

A long evaluation can be stopped and resumed (`resume_file`, `deadline`): the per-image
estimates of finished batches are saved, with a key of everything they depend on (the
weights, the images, the model, the estimator settings and what compiled them), and a
later call with the same key scores only the rest. Batches are the same either way, so a
resumed estimate equals an uninterrupted one bit for bit.
"""

import functools
import hashlib
import io
import json
import math
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from crvae_jax import compiled, objectives, randomness
from crvae_jax.sharding import (BATCH_AXIS, data_parallel, global_indices, map_batches,
                                padded_batch_size, replicate)
from crvae_jax.train.checkpoints import write_bytes_atomic


class LikelihoodResult(NamedTuple):
  """Per-image log-likelihood estimates in nats (higher is better), each [N]."""
  elbo: np.ndarray  # mean over the K samples of log w_k: an estimate of the ELBO
  log_px_k1: np.ndarray  # log w_1: the first sample alone (the K = 1 bound)
  log_px_report: np.ndarray  # logmeanexp over the first `report_k` samples
  log_px: np.ndarray  # logmeanexp over all K samples
  num_samples: int
  report_k: int
  resumed: int = 0  # images read from a resume file (scored by an earlier call)


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


class EvaluationPaused(Exception):
  """Raised by `estimate_log_likelihood` at its deadline; the finished images are saved in
  its resume_file, and the same call later scores the rest. done: images finished in
  all, resumed: of those, the ones an earlier call had saved."""

  def __init__(self, done: int, total: int, resume_file: str, resumed: int = 0):
    super().__init__(f"IS evaluation paused at its deadline after {done} of {total} "
                     f"images (saved in {resume_file}; the same call resumes)")
    self.done, self.total, self.resume_file, self.resumed = done, total, resume_file, resumed


SAVE_EVERY_S = 60.0  # how often a resumable evaluation saves its finished images


def arrays_digest(*arrays) -> str:
  """A short sha256 of the arrays' bytes: which weights or images a result came from."""
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def _read_partial(path: str):
  """(key, rows [n, 4]) of a resume file; None if there is none or it is unreadable
  (a kill mid-write leaves the old file, but anything else there is ignored too)."""
  try:
    with np.load(path) as f:
      key, rows = str(f["key"]), np.asarray(f["rows"], np.float32)
  except Exception:  # pylint: disable=broad-except  (missing, empty, truncated, not npz)
    return None
  return (key, rows) if rows.ndim == 2 and rows.shape[1] == 4 else None


def saved_images(resume_file: str) -> int:
  """How many images a resume file holds (whatever its key; 0 if none): for estimates."""
  partial = _read_partial(resume_file)
  return 0 if partial is None else len(partial[1])


def _cpu_model() -> str:
  """The processor's model name (Linux), '' elsewhere: XLA compiles other code for
  another CPU model, so rows from two CPU models are not mixed."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name")), "")
  except OSError:
    return ""


def _resume_key(model, variables, images_binary, **settings) -> str:
  """Everything the saved estimates depend on: the weights and images (hashed), the
  model's definition (its kernels included), the estimator settings, and the software
  and hardware that compiled it."""
  device = jax.devices()[0]
  return json.dumps({
      "variables": arrays_digest(*jax.tree_util.tree_leaves(jax.device_get(variables))),
      "images": arrays_digest(images_binary), "num_images": len(images_binary),
      "model": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
      "compiler_options": compiled.compiler_options(getattr(model, "conv_impl", "auto")),
      "jax": jax.__version__, "platform": device.platform,
      "device_kind": device.device_kind, "cpu": _cpu_model(), **settings},
      sort_keys=True)


def _save_partial(path: str, key: str, rows: np.ndarray) -> None:
  buf = io.BytesIO()
  np.savez(buf, key=np.array(key), rows=rows)
  write_bytes_atomic(path, buf.getvalue())


def estimate_log_likelihood(model, variables, images_binary: np.ndarray, mesh, *,
                            num_samples: int, chunk_size: int = 128,
                            batch_size: int = 100, report_k: int = 100, seed: int = 0,
                            progress: bool = True, resume_file: Optional[str] = None,
                            deadline: Optional[float] = None) -> LikelihoodResult:
  """Importance-sampled log p(x) for every image in images_binary [N, 28, 28] {0, 1}.

  Args:
    model: an `MnistVAE`; variables: {'params', 'batch_stats'} (BN in inference mode).
    num_samples: K importance samples per image (10,000 in the paper).
    chunk_size: samples decoded at once per image (memory ~ batch/devices * chunk).
    batch_size: images per call, rounded up to a multiple of the device count.
    report_k: the smaller K also reported (100); seed: the estimate's seed.
    progress: show a progress bar.
    resume_file: a .npz path (single process only): finished batches are saved there
      about every SAVE_EVERY_S seconds and at a pause, and a call with the same weights,
      images and settings starts after them. The caller deletes it when done.
    deadline: a `time.monotonic()` time; a batch that would end past it (timed by the
      previous batch) is not started: the finished images are saved and
      `EvaluationPaused` is raised (needs resume_file). The first batch always runs.
  """
  if num_samples < 1 or chunk_size < 1 or batch_size < 1:
    raise ValueError("num_samples, chunk_size and batch_size must be >= 1, got "
                     f"{num_samples}, {chunk_size}, {batch_size}")
  if deadline is not None and resume_file is None:
    raise ValueError("an evaluation with a deadline needs a resume_file to save its "
                     "finished images in")
  if resume_file is not None and jax.process_count() > 1:
    raise ValueError("resume_file is for single-process evaluations: in a multi-process "
                     "run each process would need the same file")
  estimator = make_estimator(model, mesh, num_samples=num_samples,
                             chunk_size=chunk_size, report_k=report_k)
  batch = padded_batch_size(batch_size, mesh)  # the batches map_batches feeds
  n = len(images_binary)
  rows, key = np.zeros((0, 4), np.float32), ""  # the estimator's dtype
  if resume_file is not None:
    key = _resume_key(model, variables, images_binary, num_samples=num_samples,
                      chunk_size=min(chunk_size, num_samples), batch_size=batch,
                      report_k=report_k, seed=seed, devices=mesh.size)
    partial = _read_partial(resume_file)
    if partial is not None and partial[0] == key:
      rows = partial[1]
  done = len(rows)
  variables, seed_key = replicate(mesh, variables), jax.random.key(seed)
  parts, last_save, batch_s = [rows], time.monotonic(), None
  with tqdm(total=n, initial=done, unit="img", desc=f"IS-NLL K={num_samples}",
            disable=not progress) as bar:
    for lo in range(done, n, batch):  # the batches of an uninterrupted run
      # No batch starts that would end past the deadline (timed by the last one; the
      # first of a call always runs: it includes the compilation).
      if deadline is not None and batch_s is not None and (
          time.monotonic() + batch_s > deadline):
        _save_partial(resume_file, key, np.concatenate(parts))
        raise EvaluationPaused(lo, n, resume_file, done)
      t0 = time.monotonic()
      parts.append(map_batches(
          lambda b, off, lo=lo: estimator(variables, b, off + lo, seed_key),
          images_binary[lo:lo + batch], mesh, batch, progress=bar))  # [b, 4]
      batch_s = time.monotonic() - t0
      if resume_file is not None and lo + batch < n and (
          time.monotonic() - last_save > SAVE_EVERY_S):
        _save_partial(resume_file, key, np.concatenate(parts))
        last_save = time.monotonic()
  per_image = np.concatenate(parts)  # [N, 4]
  elbo, k1, report, full = per_image.T
  return LikelihoodResult(elbo, k1, report, full, num_samples, min(report_k, num_samples),
                          done)


def remove_resume_file(resume_file: str) -> None:
  """Delete a finished evaluation's resume file (if there is one)."""
  if os.path.exists(resume_file):
    os.remove(resume_file)
