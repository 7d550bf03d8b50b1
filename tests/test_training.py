"""End to end on tiny data: train, checkpoint, resume exactly, evaluate, sample, CLI."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from crvae_jax import likelihood
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import checkpoints, engine, mnist_step


def _params_of(workdir, config, data):
  del data  # restoring needs no data
  _, variables, step = mnist_family.restore_variables(config, workdir, "latest")
  return jax.device_get(variables), step


def test_train_resume_evaluate_sample(tmp_path, tiny_config, tiny_data, cli_workdir,
                                      absl_logs):
  config = tiny_config
  config.train.num_epochs = 2.0  # 4 steps / epoch
  straight = str(tmp_path / "straight")
  result = mnist_family.train_and_evaluate(config, straight, data=tiny_data)
  assert np.isfinite(result["elbo"]) and result["elbo"] < 0

  # The one-epoch run of this config: the session fixture `cli_workdir` (conftest.py)
  # trained it through experiments/main.py --mode=train,evaluate,sample, which also
  # scored its best checkpoint and drew its pictures. Tests only read it: work on a copy.
  cli_dir, first = cli_workdir
  assert first.train.num_epochs == 1.0
  assert checkpoints.config_differences(checkpoints.read_config_json(cli_dir), config) == []
  resumed = str(tmp_path / "resumed")
  shutil.copytree(cli_dir, resumed)

  # Evaluation: the CLI's `evaluate` wrote the summary and the per-image values.
  k = config.eval.num_samples
  with open(os.path.join(cli_dir, f"eval_test_K{k}.json"), encoding="utf-8") as f:
    summary = json.load(f)
  per_image = {name: np.load(mnist_family.per_image_path(str(cli_dir), k, name))
               for name in mnist_family.PER_IMAGE_NAMES}
  assert per_image["nll"].shape == (len(tiny_data.test_binary),)
  assert np.isclose(summary["nll"], per_image["nll"].mean())
  # log-mean-exp of the weights is at least their mean: NLL <= -ELBO, per image.
  assert np.all(per_image["nll"] <= per_image["neg_elbo"] + 1e-4)
  assert summary["nll"] > 0 and summary["test_set"] == tiny_data.test_set
  # A second evaluation (of the copy, same checkpoint) from the same seed reproduces
  # every per-image value exactly.
  again = mnist_family.evaluate(config, resumed, data=tiny_data)
  assert again["nll"] == summary["nll"]
  assert np.isclose(again["nll"], per_image["nll"].mean())
  assert again["test_set"] == tiny_data.test_set
  np.testing.assert_array_equal(
      np.load(mnist_family.per_image_path(resumed, k)), per_image["nll"])

  # An evaluation paused at its deadline (after its first batch of 4) and run again
  # gives the per-image values of an uninterrupted one at the same batch size.
  config.eval.batch_size = 4
  mnist_family.evaluate(config, resumed, data=tiny_data)
  whole = np.load(mnist_family.per_image_path(resumed, k))
  partial = mnist_family.resume_path(resumed, k, "best", len(tiny_data.test_binary))
  with pytest.raises(likelihood.EvaluationPaused, match="after 4 of 10"):
    mnist_family.evaluate(config, resumed, data=tiny_data, deadline=-math.inf)
  assert os.path.exists(partial)
  finished = mnist_family.evaluate(config, resumed, data=tiny_data)
  assert finished["resumed_images"] == 4 and not os.path.exists(partial)
  np.testing.assert_array_equal(np.load(mnist_family.per_image_path(resumed, k)), whole)
  config.eval.batch_size = first.eval.batch_size

  # `sample` (run by the CLI) wrote both pictures.
  for name in ("prior_final.png", "reconstructions.png"):
    assert os.path.getsize(os.path.join(cli_dir, "samples", name)) > 100

  # Run the 2-epoch config on the one-epoch workdir: it resumes at step 4 and must end
  # where the uninterrupted run ended.
  assert _params_of(resumed, config, tiny_data)[1] == 4
  with open(os.path.join(cli_dir, "train_summary.json"), encoding="utf-8") as f:
    first_summary = json.load(f)
  absl_logs.clear()
  mnist_family.train_and_evaluate(config, resumed, data=tiny_data)
  assert any("Resuming from step 4" in line for line in absl_logs.messages)
  # The summary's time counts both invocations (train_time.json carried the first).
  with open(os.path.join(resumed, "train_summary.json"), encoding="utf-8") as f:
    resumed_summary = json.load(f)
  assert first_summary["invocations"] == 1 and resumed_summary["invocations"] == 2
  assert resumed_summary["train_seconds"] > first_summary["train_seconds"] > 0
  (a, step_a), (b, step_b) = (_params_of(d, config, tiny_data) for d in (straight, resumed))
  assert step_a == step_b == 8
  jax.tree.map(np.testing.assert_array_equal, a, b)

  # Killed after its last checkpoint, before its summary: a rerun validates the final
  # state and writes the summary the uninterrupted run wrote.
  os.remove(os.path.join(straight, "train_summary.json"))
  again = mnist_family.train_and_evaluate(config, straight, data=tiny_data)
  assert again["elbo"] == result["elbo"]
  assert os.path.exists(os.path.join(straight, "train_summary.json"))

  # Artifacts a researcher looks for.
  assert os.path.exists(os.path.join(straight, "config.json"))
  assert checkpoints.read_config_json(straight)["model"]["variant"] == "crvae"
  rows = [json.loads(l) for l in open(os.path.join(straight, "metrics.jsonl"))]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert {"loss", "recon", "kl", "kl_per_block/0", "grad_norm", "examples_per_s"} <= set(
      train_rows[-1])
  assert any(r["split"] == "valid" for r in rows)
  assert os.listdir(os.path.join(straight, "tb"))
  assert os.listdir(os.path.join(straight, "best"))

  # Another architecture: the error names the parameter paths and both shapes.
  wider = config.copy_and_resolve_references()
  wider.model.width = 3
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"does not fit this model[^\n]*\n  params/dec_in/kernel: "
                     r"checkpoint \(3, 3, 8, 16\) != model \(3, 3, 8, 24\)"):
    mnist_family.restore_variables(wider, straight, "latest")

  # A damaged newest checkpoint (a save killed half-way never gets its final name, but
  # disks fail) is skipped with a warning; the previous one is restored.
  ckpt_dir = os.path.join(straight, "checkpoints")
  for root, _, files in os.walk(os.path.join(ckpt_dir, "8")):
    for name in files:
      open(os.path.join(root, name), "wb").close()  # truncate every file
  os.makedirs(os.path.join(ckpt_dir, "12.orbax-checkpoint-tmp-0"))  # an unfinished save
  with pytest.warns(RuntimeWarning, match=r"checkpoints/8 cannot be restored"):
    _, _, step = mnist_family.restore_variables(config, straight, "latest")
  assert step == 4


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path, tiny_config, tiny_data):
  missing = tmp_path / "missing"
  with pytest.raises(FileNotFoundError, match="no such workdir: .*missing"):
    mnist_family.evaluate(tiny_config, str(missing), data=tiny_data)
  assert not missing.exists()  # evaluating never creates a workdir
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no 'best' checkpoint"):
    mnist_family.evaluate(tiny_config, str(tmp_path / "empty"), data=tiny_data)
  assert not list((tmp_path / "empty").iterdir())  # nor writes into one


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path, tiny_config, tiny_data):
  tiny_config.train.batch_size = 7
  with pytest.raises(ValueError, match="train.batch_size=7.*multiple of the 2 device"):
    mnist_family.train_and_evaluate(tiny_config, str(tmp_path), data=tiny_data)


def test_workdir_of_another_config_refuses_to_resume(tmp_path, tiny_config, tiny_data):
  from crvae_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  checkpoints.write_config(workdir, tiny_config)
  other = tiny_config.copy_and_resolve_references()
  other.model.width = 3
  other.objective.beta = 1.0
  with pytest.raises(ConfigError, match=r"model.width: 2 \(workdir\) != 3 \(now\)"):
    mnist_family.train_and_evaluate(other, workdir, data=tiny_data)
  more_epochs = tiny_config.copy_and_resolve_references()
  more_epochs.train.num_epochs = 5.0  # train settings may change: no difference reported
  assert checkpoints.config_differences(checkpoints.read_config_json(workdir),
                                        more_epochs) == []


def test_trajectory_settings_may_not_change_on_resume_unless_asked(tmp_path, tiny_config):
  from crvae_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  checkpoints.write_config(workdir, tiny_config)
  other = tiny_config.copy_and_resolve_references()
  other.optim.learning_rate = tiny_config.optim.learning_rate * 2
  other.train.seed = tiny_config.train.seed + 1
  with pytest.raises(ConfigError, match=r"optim.learning_rate: .*\n  train.seed: "):
    checkpoints.refuse_other_config(workdir, other)
  # A config.json written before a key existed: that key is not compared.
  saved = checkpoints.read_config_json(workdir)
  del saved["optim"]["learning_rate"]
  assert checkpoints.config_differences(saved, other) == [
      f"train.seed: {tiny_config.train.seed} (workdir) != {other.train.seed} (now)"]
  # Asked for: the run goes on, and config.json now describes it (the old one is kept).
  other.train.resume_other_config = True
  checkpoints.refuse_other_config(workdir, other)
  assert checkpoints.read_config_json(workdir)["train"]["seed"] == other.train.seed
  with open(tmp_path / "config.previous.json", encoding="utf-8") as f:
    assert json.load(f)["train"]["seed"] == tiny_config.train.seed
  assert checkpoints.config_differences(checkpoints.read_config_json(workdir), other) == []


def test_nonfinite_steps_are_skipped_and_too_many_stop_the_run(tmp_path, tiny_config,
                                                                tiny_data, monkeypatch,
                                                                absl_logs):
  # Fault injection: at the listed steps the objective's loss is NaN (so are the grads).
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  bad_steps, seen = {1, 5, 6}, {}
  real = mnist_step.make_train_step

  def make_step(model, tx, objective_fn, mesh, **kw):
    good = real(model, tx, objective_fn, mesh, **kw)
    bad = real(model, tx, lambda out: objective_fn(out)._replace(
        loss=objective_fn(out).loss * jnp.nan), mesh, **kw)

    def step(state, batch, rng):
      if int(jax.device_get(state.step)) not in bad_steps:
        return good(state, batch, rng)
      before = jax.device_get(state)  # a host copy: the step donates `state`
      state, metrics = bad(state, batch, rng)
      seen[int(before.step)] = (before, jax.device_get(state))
      return state, metrics
    return step

  monkeypatch.setattr(mnist_step, "make_train_step", make_step)
  config = tiny_config
  config.train.num_epochs = 2.0  # 8 steps; checkpoint after step 4
  config.train.max_nonfinite_steps = 2
  with pytest.raises(engine.NonFiniteError, match=r"stopped at step 7: 2 consecutive steps "
                     r"had non-finite values \(grad_norm, loss\).*Last good checkpoint: "
                     r"step 4"):
    mnist_family.train_and_evaluate(config, str(tmp_path), data=tiny_data)
  assert any(l.startswith("step 2: non-finite grad_norm, loss; update skipped (1 in a row")
             for l in absl_logs.messages), absl_logs.messages
  for before, after in seen.values():
    # Parameters, BN statistics and Adam's moments and count are bit-identical.
    jax.tree.map(np.testing.assert_array_equal,
                 (before.params, before.batch_stats, before.opt_state),
                 (after.params, after.batch_stats, after.opt_state))
    assert after.step == before.step + 1
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any(r.get("skipped", 0) > 0 for r in rows)  # the skipped fraction is logged
