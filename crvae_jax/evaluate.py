"""`evaluate` and `sample` modes: restore a checkpoint, score the test set, draw pictures."""

import json
import os
import time
from typing import Optional

import jax
import numpy as np

from crvae_jax import config_checks, distributed, likelihood, sampling
from crvae_jax.train import checkpoints, parallel, setup
from crvae_jax.train.loop import state_variables

# Per-image arrays `evaluate` saves: K=N NLL, K=report_k NLL, -ELBO, the K=1 term.
PER_IMAGE_NAMES = ("nll", "nll_report", "neg_elbo", "nll_k1")


def restore_variables(config, workdir: str, which: str, num_train: int):
  """(model, {'params', 'batch_stats'}, step) from the workdir's `which` checkpoint."""
  mesh = parallel.make_mesh(config.train.num_devices)
  config_checks.check_mnist_config(config, mesh.size)
  model = setup.build_model(config)
  target = parallel.replicate(mesh, setup.init_state(
      model, setup.build_optimizer(config, num_train), config.train.seed))
  ckpts = checkpoints.Checkpoints(workdir)
  state, step = ckpts.restore(target, which)
  ckpts.close()
  if state is None:
    raise FileNotFoundError(
        f"no '{which}' checkpoint in {os.path.abspath(workdir)}: train first "
        "(--mode=train) or point --workdir at a trained run")
  return model, state_variables(state), step


def per_image_path(workdir: str, num_samples: int, name: str = "nll") -> str:
  """Where `evaluate` saves one per-image array (name in PER_IMAGE_NAMES)."""
  if name not in PER_IMAGE_NAMES:
    raise ValueError(f"per-image name must be one of {PER_IMAGE_NAMES}, got {name!r}")
  return os.path.join(workdir, f"eval_test_K{num_samples}_{name}.npy")


def evaluate(config, workdir: str, *, data: Optional[setup.MnistData] = None,
             log=print) -> dict:
  """Importance-sampled test NLL (config.eval); writes eval_test_K<K>.json and the
  per-image values (nats, [N] float64, test-set order) eval_test_K<K>_<name>.npy into the
  workdir, name in PER_IMAGE_NAMES, for paired comparisons between models.

  In a multi-process run the test images are split over every process's devices, every
  process returns the same summary, and process 0 writes the files.
  """
  main_process = distributed.is_main()
  log = distributed.main_only(log)
  data = data or setup.load_data(config, log=log)
  e = config.eval
  model, variables, step = restore_variables(config, workdir, e.checkpoint,
                                             len(data.train_images))
  mesh = parallel.make_mesh(config.train.num_devices)
  log(f"Scoring {len(data.test_binary)} test images with K={e.num_samples} importance "
      f"samples ({e.checkpoint} checkpoint, step {step}); test set: {data.test_set}")
  result = likelihood.estimate_log_likelihood(
      model, variables, data.test_binary, mesh, num_samples=e.num_samples,
      chunk_size=e.chunk_size, batch_size=e.batch_size, report_k=e.report_k, seed=e.seed,
      progress=main_process)
  summary = {"checkpoint": e.checkpoint, "step": int(step), "test_set": data.test_set,
             "num_images": int(len(data.test_binary)), "num_samples": e.num_samples,
             "seed": e.seed, "scale": config.get("scale", "?"),
             "variant": config.model.variant, "num_blocks": config.model.num_blocks,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "devices": f"{len(mesh.devices.flat)} x {mesh.devices.flat[0].device_kind}",
             "processes": jax.process_count(),
             "jax": jax.__version__}
  for name, values in (("nll", -result.log_px), (f"nll_k{result.report_k}",
                                                  -result.log_px_report),
                       ("neg_elbo", -result.elbo)):
    mean, stderr = likelihood.mean_and_stderr(values)
    summary[name], summary[name + "_stderr"] = mean, stderr
  per_image = {"nll": -result.log_px, "nll_report": -result.log_px_report,
               "neg_elbo": -result.elbo, "nll_k1": -result.log_px_k1}
  assert set(per_image) == set(PER_IMAGE_NAMES)
  log(f"test NLL (K={e.num_samples}): {summary['nll']:.2f} +- {summary['nll_stderr']:.2f}"
      f" nats | K={result.report_k}: {summary[f'nll_k{result.report_k}']:.2f} | "
      f"-ELBO: {summary['neg_elbo']:.2f} | {data.test_set}")
  if not main_process:
    return summary
  stem = os.path.join(workdir, f"eval_test_K{e.num_samples}")
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  for name, values in per_image.items():
    np.save(per_image_path(workdir, e.num_samples, name), np.asarray(values, np.float64))
  return summary


def sample(config, workdir: str, *, data: Optional[setup.MnistData] = None,
           log=print) -> list:
  """Writes samples/prior_final.png and samples/reconstructions.png into the workdir."""
  data = data or setup.load_data(config, log=log)
  model, variables, step = restore_variables(config, workdir, config.eval.checkpoint,
                                             len(data.train_images))
  out = os.path.join(workdir, "samples")
  paths = [
      sampling.write_prior_samples(model, variables, config,
                                   os.path.join(out, "prior_final.png")),
      sampling.write_reconstructions(model, variables, data.test_binary[:50],
                                     os.path.join(out, "reconstructions.png")),
  ]
  log(f"wrote {', '.join(paths)} (step {step})")
  return paths
