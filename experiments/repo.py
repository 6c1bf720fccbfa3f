"""Where the experiments' files are, and which commit the code is at (imports nothing heavy)."""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
REPORTS = REPO / 'experiments' / 'reports'
DEFAULT_TEXT = REPO.parent / 'shared' / 'data' / 'tinyshakespeare.txt'  # Byte-level Shakespeare.
DEFAULT_SOURCES = ('synthetic', str(DEFAULT_TEXT))


@functools.cache
def git_commit() -> str:
  """Short hash of HEAD, '+ uncommitted changes' when tracked code differs from it (reports
  and Markdown excluded), or 'unknown' outside a git checkout. Read once per process: a grid
  runs the code it imported at start, whatever HEAD becomes while it runs."""
  git = lambda *args: subprocess.run(['git', *args], cwd=REPO, check=True, capture_output=True,
                                     text=True).stdout.strip()
  try:
    dirty = git('status', '--porcelain', '--untracked-files=no', '--', '.',
                ':(exclude)experiments/reports', ':(exclude)*.md')
    return git('rev-parse', '--short', 'HEAD') + (' + uncommitted changes' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def display_path(path: str | os.PathLike) -> str:
  """A path relative to the repository where it lies inside it (reports stay portable); a link
  inside it (a data/ directory pointing at a disk elsewhere) is named as the link."""
  path = pathlib.Path(os.path.abspath(path))
  return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def portable_config(config: dict) -> dict:
  """A run's config (as a dict) as a report keeps it: its data path through `display_path`."""
  path = config.get('data', {}).get('path')
  return {**config, 'data': {**config['data'], 'path': display_path(path)}} if path else config


def report_dir(name: str, out_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where an experiment's report goes: `out_dir`, else experiments/reports/<name>."""
  return pathlib.Path(out_dir or REPORTS / name)


def runs_root(name: str, workdir_root: str | os.PathLike | None = None) -> pathlib.Path:
  """Where an experiment's runs go: `workdir_root`, else workdirs/<name> in the repository."""
  return pathlib.Path(workdir_root or REPO / 'workdirs' / name)
