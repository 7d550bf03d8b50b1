"""compare_torch measures JAX against the best PyTorch variant, prints every ratio next to
its machine line, and --write_results keeps every run in RESULTS.md."""

import sys

import pytest

from benchmarks import compare_torch

MACHINE = "2026-12-03 10:41 UTC | x86_64 | 2 cores | malloc THP on | jax 0.10.2 cpu x1"


def fake_result(scale="paper"):
  names = ["jax", "torch", "torch-compile"]
  median = {("jax", "train"): 100.0, ("torch", "train"): 80.0,
            ("torch-compile", "train"): 125.0, ("jax", "eval"): 600.0,
            ("torch", "eval"): 400.0, ("torch-compile", "eval"): 300.0}
  median.update({(n, "peak"): 300.0 for n in names})
  info = {n: {"runtime": f"{n} runtime", "params": 15_530_000} for n in names}
  info["jax"].update(runtime=MACHINE, train_flops=1.74e9, eval_flops=4.4e8)
  return {"scale": scale, "names": names, "median": median, "info": info,
          "runs": {k: [v] * 5 for k, v in median.items()},
          "startup": {n: (20.0, 3.0) for n in names}, "eval": "128, 128 x 16, 32 images"}


def test_jax_is_measured_against_the_best_torch_variant_of_each_measure():
  res = fake_result()
  assert compare_torch.best_torch(res, "train") == "torch-compile"
  assert compare_torch.best_torch(res, "eval") == "torch"
  text = compare_torch.report([res])
  ratio_lines = [l for l in text.splitlines() if l.startswith("- paper ")]
  assert len(ratio_lines) == 2
  train, evaluation = ratio_lines
  assert "torch-compile 125.0 img/s = **0.80x**" in train
  assert "torch 400 samples/s = **1.50x**" in evaluation
  for line in ratio_lines:  # the machine line and the matmul peaks next to every ratio
    assert line.endswith(MACHINE) and "matmul peak jax 300 / torch 300 GFLOP/s" in line
  assert "Ratios (JAX / best torch variant) of row cvae," in compare_torch.report(
      [{**res, "row": "cvae"}])


def test_each_jax_variant_gets_its_own_ratio_to_the_best_torch():
  res = fake_result()
  # Rename 'jax' to 'jax-cpu' and add a faster 'jax-onednn' (--jax_variants=cpu,onednn).
  rename = lambda n: "jax-cpu" if n == "jax" else n
  res["names"] = ["jax-cpu", "jax-onednn", "torch", "torch-compile"]
  res["median"] = {(rename(n), w): v for (n, w), v in res["median"].items()}
  res["median"].update({("jax-onednn", "train"): 150.0, ("jax-onednn", "eval"): 200.0,
                        ("jax-onednn", "peak"): 300.0})
  res["info"] = {rename(n): v for n, v in res["info"].items()}
  res["info"]["jax-onednn"] = {**res["info"]["jax-cpu"], "conv_impl": "onednn"}
  res["info"]["jax-cpu"]["conv_impl"] = "cpu"
  res["runs"] = {k: [v] * 5 for k, v in res["median"].items()}
  res["startup"]["jax-cpu"] = res["startup"]["jax-onednn"] = res["startup"].pop("jax")
  assert compare_torch.best_torch(res, "train") == "torch-compile"  # no jax worker
  text = compare_torch.report([res])
  assert "jax-cpu: conv_impl cpu, jax-onednn: conv_impl onednn" in text.splitlines()[0]
  ratio_lines = [l for l in text.splitlines() if l.startswith("- paper ")]
  assert [l.split(" = ")[0] for l in ratio_lines] == [
      "- paper train: jax-cpu 100.0 / torch-compile 125.0 img/s",
      "- paper train: jax-onednn 150.0 / torch-compile 125.0 img/s",
      "- paper eval: jax-cpu 600 / torch 400 samples/s",
      "- paper eval: jax-onednn 200 / torch 400 samples/s"]
  assert "**0.80x** / **1.20x**" in text and "**1.50x** / **0.50x**" in text


def test_jax_variants_start_jax_workers_with_their_conv_impl(monkeypatch):
  args = compare_torch.argparse.Namespace(jax_variants=["cpu", "onednn"], conv_impl="")
  assert compare_torch.jax_names(args) == ["jax-cpu", "jax-onednn"]
  assert compare_torch.jax_names(compare_torch.argparse.Namespace(jax_variants=[])) == [
      "jax"]
  started = []

  class FakePopen:
    def __init__(self, cmd, **kwargs):
      started.append(cmd)
      self.stdout = iter(['RESULT {"ready": true}\n'])

    def wait(self):
      return 1

  monkeypatch.setattr(compare_torch.subprocess, "Popen", FakePopen)
  wargs = compare_torch.argparse.Namespace(
      step="mnist", row="crvae", steps=1, eval_images=1, eval_samples=1, chunk=1,
      conv_impl="auto")
  with pytest.raises(RuntimeError):  # the fake worker says 'ready' once, then ends
    compare_torch.Worker("jax-onednn", "cpu", wargs)
  with pytest.raises(RuntimeError):
    compare_torch.Worker("jax", "cpu", wargs)
  assert "--worker=jax" in started[0] and "--conv_impl=onednn" in started[0]
  assert "--worker=jax" in started[1] and "--conv_impl=auto" in started[1]


def test_write_results_appends_every_run_and_keeps_the_rest(tmp_path):
  path = tmp_path / "RESULTS.md"
  path.write_text("# Measured results\n\nearlier text\n")
  compare_torch.write_results(f"# {MACHINE}\nfirst run", str(path))
  compare_torch.write_results(f"# {MACHINE}\nsecond run", str(path))
  text = path.read_text()
  assert text.startswith("# Measured results\n\nearlier text\n")
  assert text.count(compare_torch.RESULTS_SECTION) == 1
  assert text.count(compare_torch.RESULTS_MARKER) == 1
  assert text.index("first run") < text.index("second run") < text.index(
      compare_torch.RESULTS_MARKER)
  assert text.count(f"- Machine: {MACHINE}") == 2 and text.count("- Command: `python -m "
                                                                 "benchmarks.compare_torch") == 2


def fake_gan_result(scale="cpu"):
  res = fake_result(scale)
  res["measures"] = compare_torch.MEASURES["gan"]
  for key in [k for k in res["median"] if k[1] == "eval"]:
    del res["median"][key], res["runs"][key]
  del res["eval"]
  for n, gated in zip(res["names"], (0.25, 0.5, 0.0)):
    res["info"][n]["gated"] = gated
  res["info"]["jax"]["param_counts"] = {"gen": 1, "mi": 2, "disc": 3, "all": 6}
  del res["info"]["jax"]["eval_flops"]
  return res


def test_gan_report_has_the_train_ratio_the_gate_and_no_evaluation():
  text = compare_torch.report([fake_gan_result()])
  ratio_lines = [l for l in text.splitlines() if l.startswith("- cpu ")]
  assert len(ratio_lines) == 1
  assert "torch-compile 125.0 img/s = **0.80x**" in ratio_lines[0]
  assert ratio_lines[0].endswith(MACHINE)
  header, _, row = [l for l in text.splitlines() if l.startswith("|")]
  assert "eval" not in header and "D updates gated jax / torch / torch-compile" in header
  assert len(header.split("|")) == len(row.split("|"))
  assert "| 25% / 50% / 0% |" in row
  assert "1.74 GFLOP" in text and "eval" not in text.split("Every timing")[1]


def test_gan_step_times_the_stage1_configs():
  cpu = compare_torch.config_at_scale("gan", "crvaegan", "cpu")
  paper = compare_torch.config_at_scale("gan", "vaegan", "paper")
  assert (cpu.model.width, cpu.model.lstm_hidden, cpu.train.batch_size) == (8, 64, 32)
  assert cpu.row == "emoji_crvaegan" and cpu.scale == "cpu"
  assert (paper.model.width, paper.model.latent_channels, paper.train.batch_size) == (
      32, 64, 64)
  assert paper.row == "celeba_vaegan"


@pytest.mark.parametrize("row", ["vae", "criwa"])  # criwa: crVAE's model, IWAE step
def test_a_row_the_torch_reference_lacks_is_refused_before_any_worker_starts(
    row, monkeypatch, capsys):
  pytest.importorskip("torch", reason="the check asks the PyTorch reference (test-only)")
  started = []
  monkeypatch.setattr(compare_torch, "compare", lambda *a: started.append(a))
  monkeypatch.setattr(sys, "argv", ["compare_torch", f"--row={row}", "--scales=cpu"])
  with pytest.raises(SystemExit):
    compare_torch.main()
  assert not started
  assert f"--row={row}: the PyTorch reference" in capsys.readouterr().err


def test_the_rows_the_torch_reference_ports_pass_the_check(monkeypatch):
  pytest.importorskip("torch", reason="the check asks the PyTorch reference (test-only)")
  started = []
  monkeypatch.setattr(compare_torch, "compare", lambda scale, a: started.append(a.row) or {})
  monkeypatch.setattr(compare_torch, "report", lambda results: "")
  for row in ("crvae", "crvae_t4", "crvae_t16", "cvae"):
    monkeypatch.setattr(sys, "argv", ["compare_torch", f"--row={row}", "--scales=cpu"])
    compare_torch.main()
  assert started == ["crvae", "crvae_t4", "crvae_t16", "cvae"]


def test_kernel_counters_are_read_around_each_timing_and_reported(tmp_path, monkeypatch):
  stat = tmp_path / "vmstat"
  stat.write_text("nr_free_pages 10\npgfault 1000\ncompact_stall 7\nthp_fault_alloc 3\n"
                  "allocstall_movable 0\npgmajfault 5\n")
  assert compare_torch.vmstat(str(stat)) == {"pgfault": 1000, "compact_stall": 7,
                                             "thp_fault_alloc": 3, "allocstall_movable": 0}
  assert compare_torch.vmstat(str(tmp_path / "missing")) == {}
  counter = {"pgfault": 0, "compact_stall": 0}
  cpu = {"jax": 0.0, "torch": 0.0}

  class FakeWorker:
    """Faults 100 pages per jax timing and 300 per torch timing, stalls once per eval."""

    def __init__(self, name, scale, args, env=None):
      del scale, args, env
      self.name, self.startup_s, self.setup_s = name, 1.0, 1.0

    def ask(self, what):
      if what == "info":
        return {"runtime": MACHINE, "params": 1, "train_flops": 1.0, "eval_flops": 1.0}
      counter["pgfault"] += 100 if self.name == "jax" else 300
      counter["compact_stall"] += what == "eval"
      if self.name == "jax":
        cpu["torch"] += 2.0  # the torch worker spins while jax is timed
      return 10.0

    def cpu_seconds(self):
      return cpu[self.name]

    def close(self):
      pass

  monkeypatch.setattr(compare_torch, "Worker", FakeWorker)
  monkeypatch.setattr(compare_torch, "vmstat", lambda: dict(counter))
  args = compare_torch.argparse.Namespace(
      jax_variants=[], torch_variants=["eager"], torch_malloc="same", step="mnist",
      rounds=3, row="crvae", eval_samples=128, chunk=128, eval_images=2)
  res = compare_torch.compare("cpu", args)
  assert res["kernel"][("jax", "train")] == {"pgfault": 100, "compact_stall": 0}
  assert res["kernel"][("torch", "eval")] == {"pgfault": 300, "compact_stall": 1}
  assert ("jax", "peak") not in res["kernel"]
  text = compare_torch.report([res])
  assert "cpu torch eval pgfault 300, compact_stall 1" in text
  assert res["idle_cpu"] == {"jax": [0.0] * 9, "torch": [2.0] * 9}  # 3 rounds x 3 measures
  assert "cpu: Idle workers' CPU while another was timed" in text and "torch 2.00 / 2.00" in text
  assert "Kernel counters" not in compare_torch.report([fake_result()])  # older results
