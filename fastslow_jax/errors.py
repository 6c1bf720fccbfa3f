"""The project's usage error: bad input a user can fix. Imports nothing.

A config field, flag, file or directory that is wrong raises `UsageError` with one line naming it
and the fix; the command line prints that line and exits 2 (`cli.run`). Every other exception,
from this project or a library, keeps its traceback, so bugs stay visible.
"""


class UsageError(ValueError):
  """Bad input: the message is one line that names what is wrong and what to change."""


class NonFiniteError(FloatingPointError):
  """Training met a non-finite loss or gradient norm; the message names the step and the last
  good checkpoint. The command line prints it as one line and exits 1."""


# Exit statuses of the command line, which the launchers read (launch/README.md).
EXIT_USAGE = 2  # A UsageError: nothing to retry until the input changes.
EXIT_NONFINITE = 1  # A NonFiniteError (and any crash): not retried either.
# Stopped before the end with every complete checkpoint intact (a lost peer process, a preemption
# signal): rerunning the same command resumes. EX_TEMPFAIL of sysexits.h.
EXIT_RESUMABLE = 75
