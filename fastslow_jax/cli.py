"""Plumbing shared by the command-line entry points (train, evaluate).

Bad flags, configs and input end the command with one line on stderr and exit status 2; a
non-finite loss with exit status 1. Multi-process start-up and quiet library logs come first.
"""

from __future__ import annotations

import ast
import contextlib
import sys
from collections.abc import Callable

from absl import app, flags

from fastslow_jax import distributed, metrics


def error(e: Exception, status: int = 2):
  """Ends the command with a one-line message on stderr."""
  print(f'error: {str(e).strip().splitlines()[0]}', file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl flag parsing whose errors (including a bad --config) are one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    text = str(e).strip()
    if text[:1] in '\'"':  # KeyError-style messages arrive quoted and escaped.
      with contextlib.suppress(ValueError, SyntaxError):
        text = str(ast.literal_eval(text))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if 'Traceback' in text:  # A config file raised: its own message is the last line.
      message = lines[-1].partition(': ')[2] or lines[-1]
    elif isinstance(e, AttributeError):  # --config.<typo>=...: ml_collections suggests a fix.
      message = f'unknown config field {lines[0]}: {" ".join(lines[1:])}'.rstrip(': ')
    else:
      message = lines[0]
    error(ValueError(message))


def run(main: Callable[[], None], define_flags: Callable[[], None]) -> None:
  """Defines the flags, parses them, starts JAX's multi-process runtime if needed, runs `main`."""
  define_flags()
  distributed.define_flags()

  def wrapped(argv):
    del argv
    metrics.quiet_library_logs()
    distributed.initialize_from_flags()
    try:
      main()
    except ValueError as e:  # Bad config or input, a damaged checkpoint.
      error(e)
    except FloatingPointError as e:  # Non-finite loss: the run stopped at a good checkpoint.
      error(e, status=1)

  app.run(wrapped, flags_parser=parse_flags)
