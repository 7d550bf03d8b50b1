"""experiments.main: flags in, a trained workdir out (tiny data injected); the project's
known errors as one line and a non-zero exit."""

import os
import subprocess
import sys

import pytest

from crvae_jax.models import layers
from crvae_jax.train import checkpoints

from experiments.configs import mnist as mnist_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_config_row_names_the_choices():
  with pytest.raises(ValueError, match="unknown MNIST config row 'crvea'.*crvae"):
    mnist_configs.get_config("crvea")
  with pytest.raises(ValueError, match="modifier"):
    mnist_configs.get_config("crvae,gpu")


def test_every_table_row_has_a_paper_and_a_cpu_config():
  for row in mnist_configs.ROWS:
    paper, cpu = mnist_configs.get_config(row), mnist_configs.get_config(row + ",cpu")
    assert paper.model.width == 32 and paper.model.lstm_hidden == 512
    assert paper.train.num_epochs == 200 and paper.eval.num_samples == 10_000
    assert cpu.model.width < paper.model.width and cpu.scale == "cpu"
    assert paper.optim.lstm_lr_divisor == paper.model.num_blocks
    assert mnist_configs.config_at_scale(row, "cpu") == cpu
    assert mnist_configs.config_at_scale(row, "paper") == paper
  with pytest.raises(ValueError, match="unknown scale 'gpu'"):
    mnist_configs.config_at_scale("crvae", "gpu")


def test_main_runs_train_evaluate_sample(cli_workdir):
  # The session fixture `cli_workdir` (conftest.py) runs experiments.main's `main`
  # with --mode=train,evaluate,sample on the tiny config and data (other tests read its
  # workdir too).
  workdir, config = cli_workdir
  assert os.path.exists(workdir / "samples" / "reconstructions.png")
  assert os.path.exists(workdir / f"eval_test_K{config.eval.num_samples}.json")
  # The configs' kernel default 'fastest' is recorded as what it picked here.
  saved = checkpoints.read_config_json(str(workdir))["model"]
  assert saved["conv_impl"] == layers.resolve_conv_impl("fastest") != "fastest"


def _main(*args, cwd):
  """`python -m experiments.main` as a user runs it (no compilation cache written)."""
  return subprocess.run([sys.executable, "-m", "experiments.main", *args,
                         "--compilation_cache_dir="], capture_output=True, text=True,
                        cwd=cwd, timeout=300, check=False)


def test_known_errors_are_one_line_and_read_only_modes_create_no_workdir(tmp_path,
                                                                         cli_workdir):
  config = f"--config={os.path.join(REPO, 'experiments/configs/mnist.py')}:crvae,cpu"
  missing = tmp_path / "missing"
  out = _main(config, f"--workdir={missing}", "--mode=evaluate", cwd=tmp_path)
  assert out.returncode == 1, out.stderr
  assert out.stderr.strip().splitlines()[-1] == f"error: no such workdir: {missing}"
  assert "Traceback" not in out.stderr and not missing.exists()

  # A workdir of another model: the config error, one line, nothing trained.
  other = tmp_path / "other"
  other.mkdir()
  saved = checkpoints.read_config_json(str(cli_workdir[0]))
  (other / "config.json").write_text(__import__("json").dumps(saved))
  out = _main(config, f"--workdir={other}", "--mode=train", cwd=tmp_path)
  assert out.returncode == 1, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "holds a run of another config" in last, last
  assert "model.width: 2 (workdir) != 8 (now)" in last and "Traceback" not in out.stderr
  assert not (other / "checkpoints").exists()


def test_bad_config_flag_is_one_line_naming_it(tmp_path):
  # ml_collections raised a KeyError / AttributeError (from its flag parsing) for an
  # override of a field the config lacks, and an OSError where main first read a config
  # file that is not there: tracebacks that did not name the flag.
  config = f"--config={os.path.join(REPO, 'experiments/configs/mnist.py')}:crvae,cpu"
  workdir = tmp_path / "run"
  for args, want in [
      ((config, "--config.train.num_epochs=1", "--config.foo.bar=1"),
       "error: --config.foo.bar: config has no field 'foo'"),
      ((config, "--config.train.num_epochz=1"),
       "error: --config.train.num_epochz: config.train has no field 'num_epochz'; "
       'Did you mean "num_epochs" instead of "num_epochz"?'),
      (("--config=configs/nonexistent.py:crvae,cpu",),
       "error: --config: no config file configs/nonexistent.py"),
      (("--config", "configs/nonexistent.py", "--config.foo=1"),
       "error: --config: no config file configs/nonexistent.py")]:
    out = _main(*args, f"--workdir={workdir}", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines() == [want], out.stderr
  assert not workdir.exists()


def test_unreadable_config_file_is_one_line_naming_it(tmp_path):
  # (was ml_collections' PermissionError traceback.) These tests may run as root, who
  # reads any file: the refusal is injected into `open` for that one path.
  config = os.path.join(REPO, "experiments/configs/mnist.py")
  script = f"""
import builtins, runpy, sys
real_open = builtins.open
def refusing_open(file, *args, **kwargs):
  if file == {config!r}:
    raise PermissionError(13, "Permission denied", file)
  return real_open(file, *args, **kwargs)
builtins.open = refusing_open
sys.argv = ["main", "--config={config}:crvae,cpu", "--workdir={tmp_path / 'run'}",
            "--mode=evaluate"]  # without the check: "no such workdir", not a training run
runpy.run_module("experiments.main", run_name="__main__")
"""
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=REPO, timeout=300, check=False)
  assert out.returncode == 1, out.stderr
  assert out.stderr.strip().splitlines() == [
      f"error: --config: cannot read config file {config}: Permission denied"], out.stderr
  assert not (tmp_path / "run").exists()


def test_workdir_that_is_or_is_under_a_file_is_one_line_before_data_loads(tmp_path):
  # (was workdir_lock's FileExistsError traceback, after MNIST had loaded)
  config = f"--config={os.path.join(REPO, 'experiments/configs/mnist.py')}:crvae,cpu"
  path = tmp_path / "a_file"
  path.write_text("not a workdir")
  dangling = tmp_path / "dangling"
  dangling.symlink_to(tmp_path / "nowhere")
  for workdir, want in ((path, f"--workdir={path} is a file, not a directory"),
                        (path / "run", f"--workdir={path / 'run'}: {path} is a file"),
                        (dangling / "run",
                         f"--workdir={dangling / 'run'}: {dangling} is a broken symlink"),
                        ("", "--workdir is empty (an unset variable?)")):
    out = _main(config, "--config.train.num_epochs=1", f"--workdir={workdir}",
                "--mode=train", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"error: {want}", out.stderr
    assert "Traceback" not in out.stderr and "kernels:" not in out.stderr
    assert path.read_text() == "not a workdir"
