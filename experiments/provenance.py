"""Where a result came from: the commit of the code that produced it."""

import os
import subprocess


def git_commit() -> str:
  """Short hash of this checkout's HEAD, '+uncommitted' when tracked files (outside
  results/) differ."""
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                            capture_output=True, text=True).stdout.strip()
    # Changes to results/ (this script's own output) do not make the code uncommitted.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            ".", ":(exclude)results"], cwd=os.path.dirname(here),
                           check=True, capture_output=True, text=True).stdout
    return commit + ("+uncommitted" if dirty.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
