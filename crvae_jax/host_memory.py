"""Host (CPU) memory for XLA's buffers: jemalloc where found, else glibc's transparent
huge pages (`glibc.malloc.hugetlb=1`), set by the entry points' restart.

XLA:CPU allocates each execution's temporary buffers with malloc (hundreds of MB for
the paper-scale MNIST train step). glibc serves blocks that large with a fresh mmap and
returns them with munmap, so every step page-faults its whole working set again, 4 KiB
at a time, and the kernel's fault handling becomes a large share of the step. With the
tunable, glibc asks the kernel for transparent huge pages on those mappings (madvise),
which removes nearly all of the faults and many TLB misses. `benchmarks/ab_host_memory.py`
measures the gain for JAX and PyTorch (benchmarks/RESULTS.md, section "Transparent huge
pages for host memory"); `benchmarks/compare_torch.py` runs both frameworks under the
same setting. Numerics do not change.

glibc reads tunables only when a process starts, so this is a launcher's concern: the
entry points in experiments/ and benchmarks/ that train or evaluate call
`reexec_with_hugepages()` first thing in their `__main__` block (never the library): it
restarts the program once, with jemalloc preloaded (below) or else with the tunable added
to GLIBC_TUNABLES. The tunable's restart does nothing when the tunable is already set,
off Linux/glibc, with glibc < 2.35 (no such tunable) or when the kernel's THP mode is
not 'madvise' ('always' needs no help, 'never' gives none); `CRVAE_JAX_HUGEPAGES=0`
turns off both restarts.

Where a jemalloc library is found (e.g. Debian's `libjemalloc2`), the restart instead
preloads it (`LD_PRELOAD`) with `JEMALLOC_CONF`: 4 KiB pages (no transparent huge
pages), no separate arena that returns huge blocks at once, and freed pages kept for
30 s (then returned lazily), so XLA's per-execution buffers are served from memory the
previous step already touched (far fewer page faults; benchmarks/RESULTS.md, "jemalloc"
and "jemalloc without huge pages"); a MALLOC_CONF you set is kept instead.
`CRVAE_JAX_MALLOC` chooses: unset, jemalloc where found, else glibc with the tunable;
`jemalloc`, the same, with a warning where it is not found; `glibc`, glibc's malloc
with the tunable. A GLIBC_TUNABLES that already holds the tunable keeps glibc's malloc
unless `CRVAE_JAX_MALLOC=jemalloc`.

Your own scripts and notebooks set it where their process starts:
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 jupyter lab   # the kernels inherit it
(`host_memory.active()` in a notebook says whether its kernel runs with it.)
"""

import os
import sys
from typing import Mapping, Optional, Tuple

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "CRVAE_JAX_HUGEPAGES"  # set to 0: no restart (no tunable, no jemalloc)
MALLOC = "CRVAE_JAX_MALLOC"  # unset or 'jemalloc': jemalloc where found; 'glibc': glibc's
MALLOC_CHOICES = ("jemalloc", "glibc")
# 4 KiB pages: with huge pages, JAX's paper-scale evaluation ran at two speeds from
# round to round (benchmarks/RESULTS.md, "jemalloc without huge pages"). Freed pages
# go back lazily (MADV_FREE, the muzzy decay). Returning them at once
# (muzzy_decay_ms:0) spared a PyTorch process beside two JAX ones; for JAX alone two
# A/Bs found neither ahead (RESULTS, "Freed pages returned at once or lazily").
JEMALLOC_CONF = ("thp:never,metadata_thp:disabled,oversize_threshold:0,"
                 "dirty_decay_ms:30000,muzzy_decay_ms:30000")
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
                  "/usr/lib/libjemalloc.so.2")
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = _THP_MODE_FILE) -> Optional[str]:
  """The kernel's THP mode ('always', 'madvise' or 'never'), None where unknown."""
  try:
    with open(path) as f:
      text = f.read()  # e.g. "always [madvise] never"
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> Optional[Tuple[int, int]]:
  """(major, minor) of the C library if it is glibc, else None."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _tunables(env: Mapping[str, str]) -> list:
  return [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]


def with_hugepages(env: Mapping[str, str]) -> dict:
  """A copy of `env` whose GLIBC_TUNABLES also holds TUNABLE (other tunables kept)."""
  env = dict(env)
  if not active(env):
    env["GLIBC_TUNABLES"] = ":".join(_tunables(env) + [TUNABLE])
  return env


def without_hugepages(env: Mapping[str, str]) -> dict:
  """A copy of `env` without TUNABLE (other tunables kept), without a preloaded jemalloc
  and with the opt-out set, so that a script started with it runs glibc's malloc as it
  is (A/B benchmarks)."""
  env = dict(env, **{OPT_OUT: "0"})
  env["GLIBC_TUNABLES"] = ":".join(t for t in _tunables(env) if t != TUNABLE)
  preload = [p for p in env.pop("LD_PRELOAD", "").split(":") if p and "libjemalloc" not in p]
  if preload:
    env["LD_PRELOAD"] = ":".join(preload)
  env.pop("MALLOC_CONF", None)
  return env


def find_jemalloc(paths=JEMALLOC_PATHS) -> Optional[str]:
  """The first jemalloc shared library found, or None."""
  return next((p for p in paths if os.path.exists(p)), None)


def with_jemalloc(env: Mapping[str, str], library: str) -> dict:
  """A copy of `env` that preloads `library` (jemalloc) with JEMALLOC_CONF, or with the
  MALLOC_CONF that `env` already sets (yours wins; `description` names it)."""
  env = dict(env)
  if not jemalloc_active(env):
    env["LD_PRELOAD"] = ":".join([library] + [p for p in env.get("LD_PRELOAD", "").split(":")
                                               if p])
  env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
  return env


def jemalloc_active(env: Optional[Mapping[str, str]] = None) -> bool:
  """Whether a process with `env` preloads jemalloc.

  With no `env`, this process: where /proc/self/maps exists it decides (the dynamic
  loader only warns about a preload it cannot load, so LD_PRELOAD alone can name a
  jemalloc that is not there); elsewhere os.environ does.
  """
  if env is None:
    maps = _mapped_files()
    if maps is not None:
      return "libjemalloc" in maps
    env = os.environ
  return "libjemalloc" in env.get("LD_PRELOAD", "")


def _mapped_files(path: str = "/proc/self/maps") -> Optional[str]:
  """This process's memory map (Linux), or None where there is none to read."""
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return None


def description(env: Optional[Mapping[str, str]] = None) -> str:
  """'malloc jemalloc', 'malloc THP on' or 'malloc THP off' (benchmark machine lines).

  With no `env`, this process (see `jemalloc_active`); a jemalloc that LD_PRELOAD names
  but the loader did not load is said so.
  """
  environ = os.environ if env is None else env
  if jemalloc_active(env):
    conf = environ.get("MALLOC_CONF", JEMALLOC_CONF)
    return "malloc jemalloc" + ("" if conf == JEMALLOC_CONF else f" (MALLOC_CONF={conf})")
  out = "malloc THP on" if active(environ) else "malloc THP off"
  if env is None and jemalloc_active(environ):
    out += " (LD_PRELOAD names jemalloc, but it is not loaded)"
  return out


def active(env: Mapping[str, str] = os.environ) -> bool:
  """Whether this process runs with TUNABLE (glibc read GLIBC_TUNABLES at its start)."""
  return TUNABLE in _tunables(env)


def should_reexec(env: Mapping[str, str], mode: Optional[str],
                  glibc: Optional[Tuple[int, int]]) -> bool:
  """Whether restarting with TUNABLE would change anything (see the module doc)."""
  if env.get(OPT_OUT, "1") == "0" or active(env):
    return False
  return sys.platform.startswith("linux") and mode == "madvise" and glibc is not None \
      and glibc >= (2, 35)


def reexec_with_hugepages() -> None:
  """Restarts this Python program with TUNABLE set, if that helps; else returns.

  Call it first thing in a `__main__` block: the command line (`sys.orig_argv`, so
  `python -m ...` and interpreter options are kept) and the working directory are the
  same in the new process, which replaces this one.
  """
  env = dict(os.environ)
  choice = env.get(MALLOC, "")
  if choice and choice not in MALLOC_CHOICES:
    print(f"{MALLOC}={choice!r} is not one of {MALLOC_CHOICES}; using the default "
          "(jemalloc where found)", file=sys.stderr)
    choice = ""
    del env[MALLOC]  # said once: the restarted process does not read it again
  # (a tunable you set yourself keeps glibc unless you ask for jemalloc)
  if choice != "glibc" and not jemalloc_active(env) and env.get(OPT_OUT, "1") != "0" \
      and (choice == "jemalloc" or not active(env)):
    library = find_jemalloc()
    if library:
      _restart(with_jemalloc(env, library))
    if choice == "jemalloc":
      print(f"{MALLOC}=jemalloc: no jemalloc library in {', '.join(JEMALLOC_PATHS)} "
            "(Debian/Ubuntu: apt install libjemalloc2); using glibc's malloc",
            file=sys.stderr)
    env[MALLOC] = "glibc"  # decided: the restart below does not look for it again
  if jemalloc_active(env) or not should_reexec(env, thp_mode(), glibc_version()):
    return
  _restart(with_hugepages(env))


def _restart(env: Mapping[str, str]) -> None:
  """Replaces this process with the same command line under `env`."""
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
