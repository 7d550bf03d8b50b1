"""crvae_jax.host_memory: when the entry points restart with glibc's THP tunable, and
that the restart keeps the command line and adds the tunable exactly once."""

import os
import subprocess
import sys
import textwrap

import pytest

from crvae_jax import host_memory
from crvae_jax.host_memory import MALLOC, OPT_OUT, TUNABLE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_env(*drop: str) -> dict:
  """This process's environment without the variables `drop`, with the repo importable:
  for a child Python that starts as a user's would."""
  env = {k: v for k, v in os.environ.items() if k not in drop}
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
  return env


def test_with_hugepages_keeps_other_tunables_and_adds_once():
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/x"}
  out = host_memory.with_hugepages(env)
  assert out["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"
  assert out["HOME"] == "/x" and env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
  assert host_memory.with_hugepages(out) == out
  assert host_memory.with_hugepages({})["GLIBC_TUNABLES"] == TUNABLE
  assert host_memory.active(out) and not host_memory.active(env)


def test_without_hugepages_removes_only_the_tunable_and_opts_out():
  env = {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}", "HOME": "/x"}
  out = host_memory.without_hugepages(env)
  assert out == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/x", OPT_OUT: "0"}
  assert not host_memory.active(out)
  assert not host_memory.should_reexec(out, "madvise", (2, 36))
  # Back on (what ab_host_memory's 'on' worker gets): only the tunable differs.
  assert host_memory.with_hugepages(out)["GLIBC_TUNABLES"] == \
      f"glibc.malloc.arena_max=2:{TUNABLE}"


@pytest.mark.parametrize("env, mode, glibc, platform, expected", [
    ({}, "madvise", (2, 36), "linux", True),
    ({}, "madvise", (2, 35), "linux", True),
    ({}, "madvise", (2, 34), "linux", False),   # the tunable appeared in glibc 2.35
    ({}, "always", (2, 36), "linux", False),    # THP already on for all memory
    ({}, "never", (2, 36), "linux", False),     # THP off: nothing to gain
    ({}, None, (2, 36), "linux", False),        # no THP sysfs file
    ({}, "madvise", None, "linux", False),      # not glibc (e.g. musl)
    ({}, "madvise", (2, 36), "darwin", False),
    ({OPT_OUT: "0"}, "madvise", (2, 36), "linux", False),
    ({OPT_OUT: "1"}, "madvise", (2, 36), "linux", True),
    ({"GLIBC_TUNABLES": TUNABLE}, "madvise", (2, 36), "linux", False),  # done already
])
def test_should_reexec(monkeypatch, env, mode, glibc, platform, expected):
  monkeypatch.setattr(sys, "platform", platform)
  assert host_memory.should_reexec(env, mode, glibc) is expected


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert host_memory.thp_mode(str(f)) == "madvise"
  f.write_text("[always] madvise never\n")
  assert host_memory.thp_mode(str(f)) == "always"
  assert host_memory.thp_mode(str(tmp_path / "missing")) is None


def test_reexec_keeps_the_command_line_and_runs_the_program_once(tmp_path):
  script = tmp_path / "prog.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys
      from crvae_jax import host_memory
      print("start", flush=True)
      if __name__ == "__main__":
        host_memory.reexec_with_hugepages()
        print("main", sys.argv[1:], os.environ.get("GLIBC_TUNABLES", ""))
      """))
  env = dict(_child_env("GLIBC_TUNABLES", OPT_OUT), **{MALLOC: "glibc"})
  out = subprocess.run([sys.executable, "-u", str(script), "--a=1", "b c"], env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  restarts = host_memory.should_reexec(env, host_memory.thp_mode(),
                                       host_memory.glibc_version())
  # A restart runs the module top twice but `main` once, with the tunable set.
  assert out.count("start") == (2 if restarts else 1), out
  assert out[-1] == f"main ['--a=1', 'b c'] {TUNABLE if restarts else ''}", out
  # Opting out: no restart.
  out = subprocess.run([sys.executable, str(script)], env=dict(env, **{OPT_OUT: "0"}),
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert out == ["start", "main [] "], out


def test_with_jemalloc_preloads_it_once_and_without_hugepages_removes_it():
  env = {"LD_PRELOAD": "/lib/other.so", "HOME": "/x"}
  out = host_memory.with_jemalloc(env, "/usr/lib/libjemalloc.so.2")
  assert out["LD_PRELOAD"] == "/usr/lib/libjemalloc.so.2:/lib/other.so"
  assert out["MALLOC_CONF"] == host_memory.JEMALLOC_CONF
  assert host_memory.with_jemalloc(out, "/usr/lib/libjemalloc.so.2") == out
  assert host_memory.jemalloc_active(out) and not host_memory.jemalloc_active(env)
  assert host_memory.description(out) == "malloc jemalloc"
  assert host_memory.description(host_memory.with_hugepages({})) == "malloc THP on"
  off = host_memory.without_hugepages(out)
  assert off["LD_PRELOAD"] == "/lib/other.so" and "MALLOC_CONF" not in off
  assert host_memory.description(off) == "malloc THP off"
  # A MALLOC_CONF of the caller's is kept, and named.
  mine = host_memory.with_jemalloc(dict(env, MALLOC_CONF="dirty_decay_ms:-1"), "/lib/je.so")
  assert mine["MALLOC_CONF"] == "dirty_decay_ms:-1"
  assert host_memory.description(
      dict(mine, LD_PRELOAD="/lib/libjemalloc.so.2")) == \
      "malloc jemalloc (MALLOC_CONF=dirty_decay_ms:-1)"


def test_find_jemalloc_takes_the_first_library_that_exists(tmp_path):
  lib = tmp_path / "libjemalloc.so.2"
  assert host_memory.find_jemalloc((str(tmp_path / "none.so"), str(lib))) is None
  lib.write_bytes(b"")
  assert host_memory.find_jemalloc((str(tmp_path / "none.so"), str(lib))) == str(lib)


def test_reexec_with_malloc_jemalloc_preloads_it_or_says_it_is_missing(tmp_path):
  script = tmp_path / "prog.py"
  script.write_text(textwrap.dedent("""
      import os
      from crvae_jax import host_memory
      if __name__ == "__main__":
        host_memory.reexec_with_hugepages()
        print("main", host_memory.description())
      """))
  env = _child_env("GLIBC_TUNABLES", OPT_OUT, "LD_PRELOAD", "MALLOC_CONF")
  env[MALLOC] = "jemalloc"
  run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                       text=True, check=True)
  if host_memory.find_jemalloc():
    assert run.stdout.splitlines()[-1] == "main malloc jemalloc", run.stdout
  else:  # falls back to glibc, saying why
    assert "no jemalloc library" in run.stderr
    assert run.stdout.splitlines()[-1].startswith("main malloc THP"), run.stdout


@pytest.mark.parametrize("choice", ["", "jemal"])
def test_reexec_takes_jemalloc_where_found_by_default(tmp_path, choice):
  script = tmp_path / "prog.py"
  script.write_text(textwrap.dedent("""
      from crvae_jax import host_memory
      if __name__ == "__main__":
        host_memory.reexec_with_hugepages()
        print("main", host_memory.description())
      """))
  env = _child_env("GLIBC_TUNABLES", OPT_OUT, "LD_PRELOAD", "MALLOC_CONF", MALLOC)
  if choice:
    env[MALLOC] = choice
  run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                       text=True, check=True)
  last = run.stdout.splitlines()[-1]
  if host_memory.find_jemalloc():
    assert last == "main malloc jemalloc", run.stdout
  else:  # glibc, without a warning unless jemalloc was asked for
    assert last.startswith("main malloc THP") and "no jemalloc" not in run.stderr
  # A value that is not a choice is named, and the default taken.
  assert (f"{MALLOC}='jemal' is not one of" in run.stderr) == bool(choice), run.stderr
  # A tunable set by hand keeps glibc's malloc.
  run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env=dict(env, GLIBC_TUNABLES=TUNABLE), check=True)
  assert run.stdout.splitlines()[-1] == "main malloc THP on", run.stdout


def test_description_of_this_process_does_not_trust_a_preload_that_failed(tmp_path):
  # The loader only warns about a library it cannot preload; the process runs on glibc.
  env = _child_env("GLIBC_TUNABLES", OPT_OUT, MALLOC, "MALLOC_CONF")
  env["LD_PRELOAD"] = str(tmp_path / "libjemalloc.so.2")  # does not exist
  code = ("from crvae_jax import host_memory; "
          "print(host_memory.jemalloc_active(), '|', host_memory.description())")
  run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, check=True)
  active, description = run.stdout.strip().split(" | ")
  assert active == "False", run.stdout
  assert description.startswith("malloc THP") and "not loaded" in description, run.stdout
  # Its environment alone would have said jemalloc.
  assert host_memory.jemalloc_active(env)
  if host_memory.find_jemalloc():  # and a preload that works is seen in the memory map
    env["LD_PRELOAD"] = host_memory.find_jemalloc()
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert run.stdout.strip() == "True | malloc jemalloc", run.stdout
