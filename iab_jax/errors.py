"""The one exception type that means "the user's config, data or files are wrong", not a bug.

The commands report a UserError as one line, `error: <message>`, and exit with status 2; any
other exception is a bug and keeps its traceback (exit status 1).
"""


class UserError(ValueError):
  """A problem with the user's config, data or files; the message names it and what was expected."""


def is_user_error(error: BaseException) -> bool:
  """UserError, a missing file we checked for, or a ValueError that names a config key."""
  if isinstance(error, (UserError, FileNotFoundError)):
    return True
  return isinstance(error, ValueError) and str(error).startswith(
      ("config.", "manifest", "task", "--"))
