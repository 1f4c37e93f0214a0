"""What the data_prep command-line tools share: user errors as one line, and path checks.

A user error (a missing directory, a dataset without what the command needs, a class the data
does not hold) ends a tool with one line on stderr, `error: ...` naming the flag or file and what
was expected, and exit status 2, as argparse does for a bad flag. Code raises it as
`SystemExit("error: ...")` (see `fail`), so library callers and tests see an ordinary SystemExit;
`run` turns it into the one line and the status. Anything else is a bug and keeps its traceback.

The checks here run before a tool imports anything heavy (JAX, grain, TensorFlow), so a mistyped
path is reported at once.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Sequence

USER_ERROR_STATUS = 2
DATASET_JSON = "dataset.json"  # iab_jax.data.records.DATASET_JSON, without importing it here
INDEX_PARQUET = "index.parquet"


def fail(message: str) -> SystemExit:
  """The exception of a user error; `raise fail("--data X: ...")`."""
  return SystemExit(message if message.startswith("error: ") else f"error: {message}")


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
  """Runs a tool's main(argv); a user error becomes one line on stderr and exit status 2.

  Returns main's status when it returns an int, else 0.
  """
  try:
    status = main(argv)
  except SystemExit as e:
    if isinstance(e.code, str):
      lines = e.code.strip().splitlines() or ["error"]
      # The first line is the error; further lines (e.g. a list of bad shards) are detail.
      print("\n".join(lines), file=sys.stderr)
      return USER_ERROR_STATUS
    raise
  return status if isinstance(status, int) else 0


def require_directory(path: str, flag: str, expected: str) -> str:
  """`path` if it is a directory, else a user error naming the flag and what was expected."""
  if not os.path.exists(path):
    raise fail(f"{flag} {path}: no such directory; expected {expected}")
  if not os.path.isdir(path):
    raise fail(f"{flag} {path}: not a directory; expected {expected}")
  return path


def require_dataset(path: str, flag: str = "--data") -> str:
  """`path` if it is an iab_jax dataset directory (dataset.json and index.parquet readable)."""
  expected = "a dataset directory holding dataset.json (written by python -m data_prep.ingest)"
  require_directory(path, flag, expected)
  info_path = os.path.join(path, DATASET_JSON)
  if not os.path.exists(info_path):
    raise fail(f"{flag} {path} holds no dataset ({DATASET_JSON} missing); build one with "
               "`python -m data_prep.ingest --src SRC --out DIR` or "
               "`python -m data_prep.minibench`")
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise fail(f"{flag} {path}: {DATASET_JSON} is unreadable ({type(e).__name__}: {e}); "
               "rerun the ingest's --merge to rewrite it") from None
  if not isinstance(info, dict) or "classes" not in info or "shards" not in info:
    raise fail(f"{flag} {path}: {DATASET_JSON} is not an iab_jax dataset description "
               "(no classes or shards)")
  if not os.path.exists(os.path.join(path, INDEX_PARQUET)):
    raise fail(f"{flag} {path}: {INDEX_PARQUET} is missing; rerun the ingest's --merge to "
               "rewrite it")
  return path
