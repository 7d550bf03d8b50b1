"""The training loop: data-parallel steps, logging, validation, checkpoints, samples.

A run is a pure function of (config, step): batch order and every random draw are
derived from the step, so `train_and_evaluate` on a workdir that holds a checkpoint
continues exactly where the previous run stopped.
"""

import json
import os
import time
from typing import Optional

import jax
from tqdm import tqdm

from crvae_jax import config_checks, distributed
from crvae_jax import data as mnist_data
from crvae_jax import sampling
from crvae_jax.train import checkpoints, guards, parallel, setup
from crvae_jax.train.guards import NonFiniteError  # noqa: F401 (re-exported)
from crvae_jax.train.metrics import MetricWriter, mean_metrics


def train_and_evaluate(config, workdir: str, *, data: Optional[setup.MnistData] = None,
                       log=print) -> dict:
  """Train (or resume) the model described by `config` in `workdir`.

  Returns the last validation metrics. Writes metrics.jsonl, TensorBoard events,
  checkpoints/ (latest), best/ (best validation ELBO), config.json and sample PNGs.
  """
  t_start = time.time()
  main_process = distributed.is_main()
  log = distributed.main_only(log)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.train.num_devices)
  config_checks.check_mnist_config(config, mesh.size)
  checkpoints.refuse_other_config(workdir, config)
  data = data or setup.load_data(config, log=log)
  num_train = len(data.train_images)
  per_epoch = setup.steps_per_epoch(config, num_train)
  total_steps = int(round(config.train.num_epochs * per_epoch))
  every = lambda epochs: max(1, int(round(epochs * per_epoch)))
  eval_every, sample_every = every(config.train.eval_every_epochs), every(
      config.train.sample_every_epochs)

  model = setup.build_model(config)
  tx = setup.build_optimizer(config, num_train)
  # Restored arrays land where the target's are: replicated over the (global) mesh.
  state = parallel.replicate(mesh, setup.init_state(model, tx, config.train.seed))
  ckpts = checkpoints.Checkpoints(workdir)
  restored, restored_step = ckpts.restore(state)
  if restored is not None:
    state = restored
    log(f"Resuming from step {restored_step} in {workdir}")
  elif main_process:
    checkpoints.write_config(workdir, config)
  num_params = sum(p.size for p in jax.tree.leaves(state.params))
  log(f"{config.model.variant} (T={config.model.num_blocks}, width={config.model.width}, "
      f"lstm={config.model.lstm_hidden}): {num_params:,} parameters; {mesh.size} "
      f"device(s) ({distributed.describe()}); {per_epoch} steps/epoch, {total_steps} steps")

  step_fn = parallel.make_train_step(
      model, tx, parallel.make_objective(config.objective, config.model.num_blocks),
      mesh, num_samples=config.objective.num_samples)
  elbo_fn = parallel.make_elbo_eval(model, mesh)
  order = mnist_data.TrainOrder(num_examples=num_train,
                                batch_size=config.train.batch_size, seed=config.train.seed)
  rng = jax.random.key(config.train.seed)
  writer = MetricWriter(workdir, enabled=main_process)
  start = int(jax.device_get(state.step))
  history, valid = [], {}
  t_interval, n_interval = time.time(), 0
  watch = guards.NonFiniteWatch(int(config.train.get("max_nonfinite_steps", 10)), workdir, log)
  watch.last_saved = restored_step
  bar = tqdm(total=total_steps, initial=start, unit="step", desc="train",
             disable=not main_process)
  try:
    with guards.StopSignals() as stop:
      for step in range(start, total_steps):
        batch = parallel.shard_batch(mesh, data.train_images, order.indices(step))
        state, metrics = step_fn(state, batch, rng)
        watch.push(step, metrics)
        history.append(metrics)
        n_interval += config.train.batch_size
        done = step + 1
        if step == start:
          jax.block_until_ready(metrics)
          log(f"first step done {time.time() - t_start:.1f}s after start (incl. compile)")
          t_interval, n_interval, history = time.time(), 0, []
        if history and (done % config.train.log_every_steps == 0 or done == total_steps):
          summary = mean_metrics(history)  # "skipped": fraction of skipped steps
          summary["examples_per_s"] = n_interval / (time.time() - t_interval)
          summary["epoch"] = done / per_epoch
          flat = writer.write(done, summary)
          bar.set_postfix(loss=f"{flat['loss']:.2f}", elbo=f"{flat['bound']:.2f}",
                          ex_s=f"{flat['examples_per_s']:.0f}")
          t_interval, n_interval, history = time.time(), 0, []
        if done % eval_every == 0 or done == total_steps:
          watch.flush()
          valid = validate(elbo_fn, state, data, mesh, config)
          writer.write(done, valid, prefix="valid")
          ckpts.save_latest(done, state)
          watch.last_saved = done
          if ckpts.save_best_if_better(done, state, valid["elbo"]):
            valid["is_best"] = 1.0
          log(f"step {done} (epoch {done / per_epoch:.2f}): valid ELBO "
              f"{valid['elbo']:.2f} nats{' (best)' if valid.get('is_best') else ''}")
        if done % sample_every == 0 or done == total_steps:
          sampling.write_prior_samples(
              model, state_variables(state), config,
              os.path.join(workdir, "samples", f"prior_{done:07d}.png"))
        bar.update(1)
        stop.exit_if_asked(done, total_steps,
                           lambda: ckpts.save_now(done, state, watch.last_saved), log)
      watch.flush()
  finally:
    bar.close()
    ckpts.wait()
    ckpts.close()
    writer.close()
  valid["skipped_steps"] = watch.total
  valid["train_seconds"] = time.time() - t_start
  if main_process:
    with open(os.path.join(workdir, "train_summary.json"), "w", encoding="utf-8") as f:
      json.dump({k: float(v) for k, v in valid.items()}, f, indent=2)
  return valid


def state_variables(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def validate(elbo_fn, state, data: setup.MnistData, mesh, config) -> dict:
  """True ELBO (beta = 1, one sample, BN in inference mode) on the validation split."""
  elbo = parallel.evaluate_elbo(elbo_fn, state_variables(state), data.valid_binary, mesh,
                                batch_size=config.eval.batch_size * 5, seed=config.eval.seed)
  return {"elbo": float(elbo.mean())}
