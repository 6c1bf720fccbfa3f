"""Plumbing shared by the command-line entry points (train, evaluate, the demo).

Bad flags, configs and input (`errors.UsageError`) end the command with one line on stderr and
exit status 2; a non-finite loss (`errors.NonFiniteError`) with exit status 1. Any other exception
keeps its traceback. Multi-process start-up and quiet library logs come first.
Every numeric flag an entry point defines must declare its range (`lower_bound=` /
`upper_bound=`), so absl refuses a value outside it while parsing, before anything runs.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from fastslow_jax import configlib, distributed
from fastslow_jax.errors import NonFiniteError, UsageError


QUIET_LIBRARIES = ('orbax', 'grain', 'tensorstore', 'jax', 'optax', 'tensorflow_datasets')


def quiet_library_logs(prefixes=QUIET_LIBRARIES) -> None:
  """Keeps checkpointing and data libraries' INFO chatter out of the log (warnings stay)."""
  def keep(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
        f'/{p}/' in record.pathname for p in prefixes)
  absl_logging.get_absl_handler().addFilter(keep)


def error(e: Exception, status: int = 2):
  """Ends the command with a one-line message on stderr."""
  print(f'error: {str(e).strip().splitlines()[0]}', file=sys.stderr)
  sys.exit(status)


def check_flag_ranges(names, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Fails (a programming error, not bad input) if a numeric flag among `names` has no range."""
  for name in sorted(names):
    parser = flag_values[name].parser
    if (isinstance(parser, (flags.IntegerParser, flags.FloatParser))
        and parser.lower_bound is None and parser.upper_bound is None):
      raise TypeError(f'flag --{name} declares no range: pass lower_bound= and/or upper_bound= '
                      'where it is defined, so that a value outside it is refused.')


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """`--config=fastslow:...` (a packaged config) becomes its file path; a missing file is an
  error before absl tries to import it."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + configlib.resolve(arg.removeprefix('--config='))
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = configlib.resolve(out[i + 1])
  return out


def parse_flags(argv):
  """absl flag parsing whose errors (including a bad --config) are one line and exit 2."""
  try:
    return flags.FLAGS(_resolve_config_flag(argv))
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
    error(UsageError(message))


def define_checked(*define_flags: Callable[[], None]) -> None:
  """Calls each `define_flags`, then checks that every numeric flag they defined declares its
  range (`check_flag_ranges`)."""
  before = set(flags.FLAGS)
  for define in define_flags:
    define()
  check_flag_ranges(set(flags.FLAGS) - before)


def command(argv: list[str], commands: tuple[str, ...]) -> str:
  """The one positional argument, among `commands` (`python -m module COMMAND --flags`)."""
  if len(argv) != 1 or argv[0] not in commands:
    raise UsageError(f'give one command, {" or ".join(commands)} (got {" ".join(argv) or "none"}).')
  return argv[0]


def run(main: Callable[..., None], define_flags: Callable[[], None],
        commands: tuple[str, ...] = ()) -> None:
  """Defines the flags, parses them, starts JAX's multi-process runtime if needed, runs `main`
  (with `commands`: `main(command)`, the positional argument naming one of them)."""
  define_checked(define_flags, distributed.define_flags)

  def wrapped(argv):
    quiet_library_logs()
    distributed.initialize_from_flags()
    try:
      main(command(argv[1:], commands)) if commands else main()
    except UsageError as e:  # Bad config or input, a damaged checkpoint.
      error(e)
    except NonFiniteError as e:  # The run stopped at a good checkpoint.
      error(e, status=1)

  app.run(wrapped, flags_parser=parse_flags)
