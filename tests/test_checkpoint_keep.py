"""What Checkpoints keeps: the last two steps, train.keep_checkpoint_every_steps' multiples
beside them (and a Stage1 training run restored at a kept step), the one best step; and
the check that refuses a period no checkpoint falls on."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax import config_checks
from crvae_jax.train import checkpoints
from experiments.configs import rgb as rgb_configs


def _steps_on_disk(workdir, keep_every):
  with checkpoints.Checkpoints(workdir, best=False, keep_every=keep_every) as ckpts:
    for step in range(1, 8):
      ckpts.save_latest(step, {"w": jnp.full((4,), float(step))})
      ckpts.wait()
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n.isdigit())


def test_keep_every_keeps_its_multiples_beside_the_last_two(tmp_path):
  assert _steps_on_disk(str(tmp_path / "plain"), 0) == [6, 7]
  assert _steps_on_disk(str(tmp_path / "kept"), 3) == [3, 6, 7]


def test_the_best_manager_keeps_one_step_the_highest_elbo(tmp_path):
  workdir = str(tmp_path)
  saved = []
  with checkpoints.Checkpoints(workdir) as ckpts:
    for step, elbo in [(1, -100.0), (2, -90.0), (3, -95.0), (4, -80.0), (5, -85.0)]:
      saved.append(ckpts.save_best_if_better(step, {"w": jnp.full((4,), float(step))}, elbo))
      ckpts.wait()
    assert ckpts.best_value() == -80.0
  assert saved == [True, True, False, True, False]
  assert sorted(n for n in os.listdir(os.path.join(workdir, "best")) if n.isdigit()) == ["4"]
  with checkpoints.Checkpoints(workdir) as ckpts:  # a new manager finds it again
    state, step = ckpts.restore({"w": jnp.zeros((4,))}, "best")
  assert step == 4 and float(state["w"][0]) == 4.0


def test_kept_step_restores(tmp_path):
  workdir = str(tmp_path)
  _steps_on_disk(workdir, 2)
  with checkpoints.Checkpoints(workdir, best=False, keep_every=2) as ckpts:
    state, step = ckpts.restore({"w": jnp.zeros((4,))}, "latest", 2)
  assert step == 2 and float(state["w"][0]) == 2.0


@pytest.mark.parametrize("value", [-500, 750])
def test_a_period_off_the_checkpoint_steps_is_refused(value):
  config = rgb_configs.get_config("emoji_crvaegan,cpu")  # checkpoints every 500 steps
  config_checks.check_rgb_config(config, 1)
  config.train.keep_checkpoint_every_steps = 4000
  config_checks.check_rgb_config(config, 1)
  config.train.keep_checkpoint_every_steps = value
  with pytest.raises(config_checks.ConfigError,
                     match=r"train.keep_checkpoint_every_steps=.*checkpoint_every_steps \(500\)"):
    config_checks.check_rgb_config(config, 1)


def test_a_training_run_keeps_the_multiples(tmp_path):
  from crvae_jax.families import stage1  # pylint: disable=g-import-not-at-top
  from test_rgb_training import tiny_rgb_config, tiny_source  # pylint: disable=g-import-not-at-top
  config = tiny_rgb_config("vaegan", 1, 1.0, steps=5)
  config.train.checkpoint_every_steps = 1
  config.train.keep_checkpoint_every_steps = 2
  stage1.train(config, str(tmp_path), source=tiny_source())
  kept = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert kept == [2, 4, 5]
  # completion_table's WORKDIR@STEP: that step's weights, not the latest's.
  from crvae_jax import completion  # pylint: disable=g-import-not-at-top
  config.train.num_devices = None
  at_2, latest = completion.restore_runs([(config, str(tmp_path), 2),
                                          (config, str(tmp_path))])
  assert (at_2.step, latest.step) == (2, 5)
  leaves = lambda t: jax.tree_util.tree_leaves(t.gen_vars["params"])
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(at_2), leaves(latest)))
