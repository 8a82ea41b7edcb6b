"""The project's one exception type for bad user input.

Code raises ``UsageError`` on purpose, with a message that names the problem
and the fix, for what a user asked for (a flag, a config field, a path, data
that are missing); an entry point reports it in one line and exits with 2.
Every other exception is a bug: it keeps its traceback and exits with 1.
"""


class UsageError(ValueError):
  """An error in what the user asked for; the message says how to fix it."""
