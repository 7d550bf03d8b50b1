"""Argument parsing of the benchmark scripts' comparison options."""

import sys
import types

import numpy as np
import pytest

from benchmarks import ab_host_memory, ab_train_step, nll_eval
from crvae_jax.models import layers
from crvae_jax import host_memory


def test_compiler_option_variants_parse_values_and_refuse_other_text():
  assert ab_train_step.extra_compiler_options(
      "+xla_cpu_prefer_vector_width=512+xla_a=true+xla_b=False+xla_c=NAME") == {
          "xla_cpu_prefer_vector_width": 512, "xla_a": True, "xla_b": False,
          "xla_c": "NAME"}
  for bad in ("+foo", "+xla_a", "+vector=3"):
    with pytest.raises(ValueError, match="not xla_KEY=VALUE"):
      ab_train_step.extra_compiler_options(bad)
  config, context = ab_train_step.variant_config_and_context("+xla_a=1", "cpu", "crvae")
  assert config.model.conv_impl == "cpu"
  with context:
    options = ab_train_step.compiled.compiler_options("cpu")
  assert options["xla_a"] == 1 and len(options) == 2  # the default's option kept
  assert "xla_a" not in ab_train_step.compiled.compiler_options("cpu")


def test_chunk_settings_parse_and_refuse_bad_text():
  assert nll_eval.parse_chunks("20x50, 50x20") == [(20, 50), (50, 20)]
  for bad in ("20", "20x0", "ax5", "20x50x2"):
    with pytest.raises(SystemExit, match="CHUNKxBATCH"):
      nll_eval.parse_chunks(bad)


def test_each_chunk_setting_is_timed_at_its_own_batch_size(monkeypatch, capsys):
  calls = []

  def fake_map_batches(fn, data, mesh, batch):
    del fn, mesh
    calls.append((len(data), batch))
    return np.zeros(len(data))

  monkeypatch.setattr(nll_eval.sharding, "map_batches", fake_map_batches)
  monkeypatch.setattr(nll_eval, "matmul_gflops", lambda: 1.0)
  args = types.SimpleNamespace(chunks="20x50,50x20", scales="cpu", row="crvae", images=40,
                               samples=100, rounds=2)
  nll_eval.compare_chunks(args)
  # compiled on one batch of each, then every timing at that setting's own batch size
  assert calls == [(40, 50), (20, 20), (40, 50), (40, 20), (40, 20), (40, 50)]
  out = capsys.readouterr().out
  assert "| crvae | cpu | 100 | 50 x 20 |" in out
  # the header names the kernels the timed config runs (its 'fastest' resolved here);
  # an evaluation runs no backward pass, so not the fused backward the config trains with
  assert (f"# kernels: conv {layers.resolve_conv_impl('fastest')} "
          "(model.conv_impl 'fastest')") in out
  assert "fused backward" not in out


def test_eval_profile_traces_the_estimator_and_names_its_scopes():
  from conftest import make_tiny_config  # pylint: disable=g-import-not-at-top
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top
  evaluation = profile_step.EvalPass(make_tiny_config(), num_samples=6, chunk_size=4)
  evaluation.run(1)
  scopes = profile_step.op_scopes(profile_step.compiled_text(evaluation))
  # the decoder runs inside the sample loop; nothing of a backward pass is compiled
  assert any("MnistVAE.decode" in s for s in scopes.values())
  assert not any(s.startswith("bwd ") for s in scopes.values())


def test_allocator_variants_are_named_environments_with_off_first(monkeypatch):
  monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's setting is not inherited
  monkeypatch.setattr(host_memory, "find_jemalloc", lambda: "/lib/libjemalloc.so.2")
  envs = ab_host_memory.environments(("off", "jemalloc", "jemalloc+omp_passive"))
  assert list(envs) == ["off", "jemalloc", "jemalloc+omp_passive"]
  assert "OMP_WAIT_POLICY" not in envs["off"] and "OMP_WAIT_POLICY" not in envs["jemalloc"]
  assert envs["jemalloc+omp_passive"] == dict(envs["jemalloc"], OMP_WAIT_POLICY="PASSIVE")
  active = ab_host_memory.environments(("off", "jemalloc+omp_active"))["jemalloc+omp_active"]
  assert active == dict(envs["jemalloc"], OMP_WAIT_POLICY="ACTIVE")
  assert host_memory.jemalloc_active(envs["jemalloc"])
  muzzy0 = ab_host_memory.environments(("off", "jemalloc+muzzy0"))["jemalloc+muzzy0"]
  assert "muzzy_decay_ms:0" in muzzy0["MALLOC_CONF"] and host_memory.jemalloc_active(muzzy0)
  assert muzzy0["MALLOC_CONF"] != host_memory.JEMALLOC_CONF
  monkeypatch.setattr(host_memory, "find_jemalloc", lambda: None)  # no library: left out
  assert list(ab_host_memory.environments(("off", "on", "jemalloc"))) == ["off", "on"]
  for bad in (("on", "off"), ("off", "jemalloc+tcmalloc"), ()):
    with pytest.raises(ValueError, match="must start with 'off'"):
      ab_host_memory.environments(bad)


def test_paired_ratio_is_per_round_and_counts_rounds_ahead():
  assert ab_host_memory.paired([110, 50, 210], [100, 60, 200]) == "1.05x (2 of 3)"


def test_process_cpu_seconds_reads_the_whole_process(tmp_path):
  from benchmarks import compare_torch  # pylint: disable=g-import-not-at-top
  tick = compare_torch.os.sysconf("SC_CLK_TCK")
  (tmp_path / "7").mkdir()
  fields = ["S"] + ["0"] * 10 + ["13", "7"] + ["0"] * 30  # utime 13, stime 7 ticks
  (tmp_path / "7" / "stat").write_bytes(b"7 (a) b\xff c) " + " ".join(fields).encode())
  assert compare_torch.process_cpu_seconds(7, str(tmp_path)) == 20 / tick
  assert compare_torch.process_cpu_seconds(9, str(tmp_path)) == 0.0  # no such process
  assert compare_torch.process_cpu_seconds(compare_torch.os.getpid()) > 0  # this one
  line = compare_torch.idle_cpu_line({"jax": [0.0, 0.0, 0.1], "torch": [2.0, 5.0, 4.0]})
  assert "jax 0.00 / 0.10" in line and "torch 4.00 / 5.00" in line


def test_ask_timed_charges_each_idle_worker_only_its_own_cpu():
  from benchmarks import compare_torch  # pylint: disable=g-import-not-at-top

  class Fake:  # a worker whose CPU clock advances by `burn` while another is asked
    def __init__(self, burn):
      self.burn, self.clock = burn, 0.0

    def cpu_seconds(self):
      return self.clock

    def ask(self, command):
      for o in others.values():
        o.clock += o.burn
      return f"answer to {command}"

  others = {"spinner": Fake(2.5), "sleeper": Fake(0.0)}
  idle = {"spinner": [], "sleeper": [], "timed": []}
  assert compare_torch.ask_timed(Fake(9.0), "train", others, idle) == "answer to train"
  compare_torch.ask_timed(Fake(9.0), "eval", others, idle)
  assert idle == {"spinner": [2.5, 2.5], "sleeper": [0.0, 0.0], "timed": []}


def test_onednn_kernels_reads_both_verbose_formats_and_each_librarys_version():
  from benchmarks import onednn_kernels  # pylint: disable=g-import-not-at-top
  lines = [  # as a JAX process prints them: the FFI's oneDNN 3.2 and XLA's own (v1)
      "onednn_verbose,info,oneDNN v3.2.0 (commit 4011219)",
      "onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
      "onednn_verbose,exec,cpu,convolution,brgconv:avx512_core,forward_training,src_f32::"
      "blocked:acdb::f0 wei_f32:a:blocked:Acdb64a::f0,,alg:convolution_direct,"
      "mb128_ic64oc64_ih30oh30kh3sh1dh0ph1_iw30ow30kw3sw1dw0pw1,40.5",
      "onednn_verbose,exec,cpu,convolution,brgconv:avx512_core,forward_training,src,,alg,"
      "mb128_ic64oc64_ih30oh30kh3sh1dh0ph1_iw30ow30kw3sw1dw0pw1,39.5",
      "onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0,,,"
      "264x256:256x1536,12.0",
      "onednn_verbose,v1,primitive,create:cache_hit,cpu,gemm_api,,undef,src,,,1x1:1x1,0.1",
      "not a verbose line,exec,1.0",
  ]
  calls = onednn_kernels.parse_verbose(lines)
  assert [(c.library, c.kind, c.impl, c.prop, c.ms) for c in calls] == [
      ("v3.2.0", "convolution", "brgconv:avx512_core", "forward_training", 40.5),
      ("v3.2.0", "convolution", "brgconv:avx512_core", "forward_training", 39.5),
      ("v3.7.3", "gemm_api", "", "undef", 12.0)]
  by_kind, by_call = onednn_kernels.summarise(calls, steps=2)
  assert by_kind == {("v3.2.0", "convolution"): 40.0, ("v3.7.3", "gemm_api"): 6.0}
  conv = ("v3.2.0", "convolution", "brgconv:avx512_core", "forward_training",
          "mb128_ic64oc64_ih30oh30kh3sh1dh0ph1_iw30ow30kw3sw1dw0pw1")
  assert by_call[conv] == (1.0, 40.0)
  table = onednn_kernels.report({"jax": lines}, steps=2, top=5)
  assert "| jax | all | all | **46.0** |" in table
  # both frameworks: the calls they share (kind, propagation, shape) side by side
  torch_lines = ["onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71)",
                 lines[2].replace("onednn_verbose,exec", "onednn_verbose,v1,primitive,exec")
                 .replace("brgconv:", "brg_conv_fwd:").replace(",40.5", ",30.0")]
  table = onednn_kernels.report({"jax": lines, "torch": torch_lines}, steps=2, top=5)
  assert ("| convolution | forward_training | mb128_ic64oc64_ih30oh30kh3sh1dh0ph1_iw30ow30kw3s"
          "w1dw0pw1 | brgconv:avx512_core | 40.0 | brg_conv_fwd:avx512_core | 15.0 |") in table
  assert "| all shared | | | | 40.0 | | 15.0 |" in table


def test_onednn_kernels_shared_table_adds_calls_that_share_a_key():
  from benchmarks import onednn_kernels  # pylint: disable=g-import-not-at-top
  reorder = "onednn_verbose,exec,cpu,reorder,{impl},undef,src,,,64x64x3x3,{ms}"
  jax_lines = ["onednn_verbose,info,oneDNN v3.2.0 (commit 4011219)",
               reorder.format(impl="jit:uni", ms=4.0), reorder.format(impl="simple:any", ms=2.0)]
  torch_lines = ["onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71)",
                 "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src,,,64x64x3x3,1.0"]
  table = onednn_kernels.report({"jax": jax_lines, "torch": torch_lines}, steps=1, top=5)
  assert "| reorder | undef | 64x64x3x3 | jit:uni; simple:any | 6.0 | jit:uni | 1.0 |" in table


def test_profile_concurrency_counts_ffi_time_beside_other_operations():
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top
  meta = lambda tid, name: {"ph": "M", "tid": tid, "name": "thread_name",
                            "args": {"name": name}}
  op = lambda tid, ts, dur, name: {"ph": "X", "tid": tid, "ts": ts, "dur": dur, "name": name}
  events = [meta(1, "tf_XLAEigen/1"), meta(2, "tf_XLAEigen/2"), meta(3, "python"),
            op(1, 0, 100, "ffi_call.3"),          # 30 us of it beside copy.2 on thread 2
            op(2, 70, 50, "copy.2"),
            op(2, 200, 40, "ffi_call.4"),         # alone
            op(1, 0, 300, "ThunkExecutor::Execute"),  # the executor's own, not counted
            op(2, 90, 10, "ThreadpoolListener::Record"),
            op(1, 150, 20, "while.1"),            # a container: its body counts instead
            op(3, 0, 500, "$<string>:1 <lambda>")]  # Python, another thread
  c = profile_step.concurrency(events)
  assert c["span"] == 240 and c["busy"] == [100, 90]  # (busiest first)
  assert c["ffi_call"] == 140 and c["ffi_call_beside"] == 30 and c["covered"] == 1.0
  # A third pool thread running beside ffi_call.3 within copy.2's time: those 25 us are
  # counted once, not twice; an operation on a thread outside the pool is not covered.
  three = events + [meta(4, "tf_XLAEigen/3"), op(4, 75, 40, "copy.5"), op(3, 0, 50, "dot.1")]
  c = profile_step.concurrency(three)
  assert c["ffi_call_beside"] == 30 and c["busy"] == [100, 90, 40]
  assert c["covered"] == 230 / 280
  assert c["ffi_call_beside_same"] == 0  # no two FFI calls at once so far
  # An FFI call on a fifth thread during 20 us of ffi_call.3, and one on thread 4 (after
  # its copy.5) during 10 us of ffi_call.4: both calls of a pair count that time.
  four = three + [meta(5, "tf_XLAEigen/4"), op(5, 80, 20, "ffi_call.9"),
                  op(4, 230, 10, "ffi_call.10")]
  c = profile_step.concurrency(four)
  assert c["ffi_call"] == 100 + 40 + 20 + 10
  assert c["ffi_call_beside_same"] == 2 * (20 + 10)
  # A sixth thread's FFI call (85-100) beside both ffi_call.3 and ffi_call.9: time with two
  # other FFI calls at once counts once (ffi_call.3: 20, ffi_call.9: 20, ffi_call.11: 15).
  five = four + [meta(6, "tf_XLAEigen/5"), op(6, 85, 15, "ffi_call.11")]
  c = profile_step.concurrency(five)
  assert c["ffi_call_beside_same"] == 20 + 20 + 15 + 2 * 10
  assert profile_step.concurrency([meta(3, "python")]) == {}


def test_ab_host_memory_pairs_rounds_against_the_reference_and_reports_idle_cpu(
    monkeypatch, capsys):
  speed = {"off": 100.0, "jemalloc": 110.0, "jemalloc+omp_active": 121.0}
  cpu = {name: 0.0 for name in speed}

  class FakeWorker:
    def __init__(self, framework, scale, args, env=None):
      self.name, self.startup_s = env["NAME"], 1.0

    def ask(self, what):
      if what == "info":
        return {"runtime": "MACHINE | malloc THP off", "conv_impl": "onednn"}
      if self.name == "jemalloc+omp_active":
        cpu["off"] += 0.5  # pretend 'off' spins while this one is timed
      return speed[self.name]

    def cpu_seconds(self):
      return cpu[self.name]

    def close(self):
      pass

  monkeypatch.setattr(ab_host_memory, "Worker", FakeWorker)
  monkeypatch.setattr(ab_host_memory, "environments",
                      lambda names: {n: {"NAME": n} for n in names})
  monkeypatch.setattr(sys, "argv", [
      "ab_host_memory", "--scales=cpu", "--frameworks=jax", "--measures=train",
      "--rounds=2", "--variants=off,jemalloc,jemalloc+omp_active", "--reference=jemalloc"])
  ab_host_memory.main()
  out = capsys.readouterr().out
  assert "conv_impl onednn" in out.splitlines()[0]
  assert "--reference=jemalloc" in out
  row = [l for l in out.splitlines() if l.startswith("| cpu | jax |")][0]
  assert "0.91x (0 of 2)" in row and "1.10x (2 of 2)" in row  # off, omp_active vs jemalloc
  assert "jemalloc+omp_active / jemalloc per round" in out
  assert "off 0.25 / 0.50" in out and "jemalloc 0.00 / 0.00" in out
  monkeypatch.setattr(sys, "argv", ["ab_host_memory", "--variants=off,jemalloc",
                                    "--reference=on"])
  with pytest.raises(SystemExit):
    ab_host_memory.main()
