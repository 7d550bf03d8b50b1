"""Where a result came from: the commit of the code that produced it, the data it read."""

import os
import platform
import subprocess

# The checkout's root (the parent of experiments/): where results/ lives and where the
# runner's subprocesses start.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
  """Short hash of this checkout's HEAD, '+uncommitted' when tracked files (outside
  results/) differ."""
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    # Changes to results/ (this script's own output) do not make the code uncommitted.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            ".", ":(exclude)results"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout
    return commit + ("+uncommitted" if dirty.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def cpu_fields() -> tuple:
  """(processor, cores) of this machine, e.g. ("Intel(R) Xeon(R) Processor (x86_64)",
  "2 cores"; "1 of 2 cores" for a process pinned to fewer than all of them, whose thread
  pools then use only those): /proc/cpuinfo's model name where Linux gives one. This
  project's machine is a VM whose host changes between sessions (an AMD EPYC one day,
  an Intel Xeon the next), so every timing carries the model, not only the
  architecture."""
  model = ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  arch = platform.machine() or "unknown architecture"
  total = os.cpu_count() or 1
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
  cores = f"{total} cores" if usable >= total else f"{usable} of {total} cores"
  return (f"{model} ({arch})" if model else arch), cores


def cpu_description() -> str:
  """`cpu_fields` as one phrase: "Intel(R) Xeon(R) Processor (x86_64), 2 cores"."""
  return ", ".join(cpu_fields())


def emoji_data_line(config) -> str:
  """What an emoji run trained on, e.g. "300 emoji of 64x64 (split 'train', categories
  'Smileys & Emotion' of the google,twitter sets: npm emoji-datasource-<set>@16.0.0)"."""
  from crvae_jax.data import emoji, rgb  # pylint: disable=g-import-not-at-top
  d = config.data
  categories = d.get("emoji_categories", "")
  return (f"{len(rgb.open_source(d)):,} emoji of 64x64 (split '{d.emoji_split}'"
          + (f", categories '{categories}'" if categories else "")
          + f" of the {d.emoji_sets} sets: npm emoji-datasource-<set>@"
          f"{emoji.EMOJI_VERSION})")
