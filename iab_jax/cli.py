"""What the commands share: config validation before any heavy import, one-line errors, exits.

`python -m iab_jax.main`, `.evaluate` and `.attribute` each define their own flags and call these:
`validate` checks a run config in well under a second without JAX or TensorFlow; `exit_on_error`
ends a failed command promptly (one line and exit status 2 for a user error, the traceback and
status 1 for a bug), taking input workers and background threads down with it; `parse_flags`
turns absl/ml_collections flag errors into one line naming the key.
"""

from __future__ import annotations

import os
import re
import sys

from absl import flags

from iab_jax import console, errors, runs

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(errors.UserError):
  """A config that cannot run; its message names the key and what was expected."""


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate(config, workdir: str | None = None, *, files: bool = True) -> None:
  """Checks what a run needs before any work starts, so a typo fails in a second, not an hour.

  Config keys, types and values; the transforms; the method's own settings; the dataset and
  manifest files; and, given the workdir, that resuming it would continue the same recipe. No
  JAX, TensorFlow or pixels are touched. `files=False` checks the config alone.
  """
  from iab_jax import methods, tasks
  from iab_jax.data import transforms

  for key in ("method", "task", "input", "evals", "seed", "log_every_steps"):
    if key not in config:
      raise ConfigError(f"config.{key} is missing")
  try:
    task = tasks.parse_task(config.task)
  except ValueError as e:
    raise ConfigError(f"config.task: {e}") from None
  if config.method not in methods.names():
    raise ConfigError(f"config.method={config.method!r} is not a known method; known: "
                      f"{', '.join(methods.names())}")
  for key in ("batch_size", "eval_batch_size"):
    value = config.input.get(key)
    if not _positive_int(value):
      raise ConfigError(f"config.input.{key}={value!r}; expected a positive integer")
  for key, least in (("worker_count", 0), ("read_threads", 1), ("prefetch_batches", 1),
                     ("worker_buffer_batches", 1)):
    value = config.input.get(key, least)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(f"config.input.{key}={value!r}; expected an integer >= {least}")
  if config.input.get("sixteen_bit", "scale") not in ("scale", "clip"):
    raise ConfigError(f"config.input.sixteen_bit={config.input.sixteen_bit!r}; expected 'scale' "
                      "or 'clip'")
  if "num_epochs" in config and (not isinstance(config.num_epochs, int) or config.num_epochs < 1):
    raise ConfigError(f"config.num_epochs={config.num_epochs!r}; expected an integer >= 1")
  if config.get("test_checkpoint", "best") not in ("best", "last"):
    raise ConfigError(f"config.test_checkpoint={config.test_checkpoint!r}; expected 'best' or "
                      "'last'")
  for key in ("transform", "eval_transform"):
    try:
      transforms.parse(config.input[key])
    except ValueError as e:
      raise ConfigError(f"config.input.{key}: {e}") from None
  for name, cfg in config.evals.items():
    levels = cfg.get("levels", (0,))
    if isinstance(levels, int):
      levels = (levels,)
    if not levels or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 6
                         for k in levels):
      raise ConfigError(f"config.evals.{name}.levels={tuple(levels)!r}; expected levels in 0..6")
  if "model" in config:
    _check_model(config.model)
  if files:
    tasks.check_files(config.input, task)
  if workdir is not None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise ConfigError(f"--workdir {workdir!r} is a file, not a directory")
    runs.check_resumable(config, workdir)


def _check_model(model) -> None:
  from iab_jax import models

  if "name" in model and model.name not in models.names():
    raise ConfigError(f"config.model.name={model.name!r}; expected one of "
                      f"{', '.join(models.names())}")
  if "dtype" in model and model.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={model.dtype!r}; expected one of {', '.join(DTYPES)}")
  pretrained = model.get("pretrained") or ""
  if isinstance(pretrained, str) and (os.sep in pretrained or pretrained.endswith(
      (".safetensors", ".pth"))) and not os.path.isfile(pretrained):
    raise ConfigError(f"config.model.pretrained={pretrained!r}: no such file")


def check_method(config) -> None:
  """The method's own config checks (its module imports JAX, so they come after `validate`)."""
  from iab_jax import methods

  try:
    methods.get(config.method).check_config(config)
  except errors.UserError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None


def run(config, workdir: str):
  """Validates `config` and runs its method's training loop; returns the results dict."""
  from iab_jax import methods, trainers

  validate(config, workdir)
  check_method(config)
  method_cls = methods.get(config.method)
  return trainers.get(method_cls.trainer).train_and_evaluate(config, workdir)


def exit_on_error(error: BaseException, *, workdir: str | None = None,
                  workdir_existed: bool = True) -> None:
  """Ends the process now: one line and status 2 for a user error, the traceback and status 1
  for a bug, 130 for Ctrl-C. Removes a workdir this command created if no checkpoint was saved,
  and takes worker processes and background threads down with it: a failed run must not keep a
  core busy waiting on an input thread that will never be read."""
  import traceback

  if isinstance(error, KeyboardInterrupt):
    print("interrupted", file=sys.stderr)
    code = 130
  elif errors.is_user_error(error):
    print(f"error: {_first_line(error)}", file=sys.stderr)
    code = 2
  else:
    traceback.print_exception(error)
    code = 1
  if workdir is not None:
    runs.remove_if_unstarted(workdir, workdir_existed)
  hard_exit(code)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  if isinstance(error, KeyError) and error.args:
    text = str(error.args[0])
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def hard_exit(code: int, grace_seconds: float = 10.0) -> None:
  """Exits with `code`: the normal way (atexit handlers stop daemonic worker processes and release
  their shared memory), with a watchdog that ends the process anyway after `grace_seconds` if a
  non-daemon thread (an input thread blocked on a buffer nobody reads) would keep it alive."""
  import threading
  import time

  sys.stdout.flush()
  sys.stderr.flush()

  def watchdog():
    time.sleep(grace_seconds)
    sys.stderr.flush()
    os._exit(code)

  threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
  sys.exit(code)


def print_table(results) -> None:
  """Table 3 of one run's results on stdout (process 0), when its task has a place in it, and
  the image-to-model, open-set and detection tables of the evals it ran."""
  from iab_jax import report

  if "jax" in sys.modules and sys.modules["jax"].process_index() != 0:
    return
  if report.TABLE_EVAL in results.get("evals", {}):
    try:
      print(report.to_markdown(report.table3([results])))
    except ValueError:  # a protocol Table 3 has no columns for
      pass
  grids = [report.image_to_model_table([results]), report.open_set_table([results]),
           *report.detection_grids([results]).values()]
  for grid in grids:
    if grid is not None:
      print(report.grid_markdown(grid))


def one_line(error: BaseException, argv) -> str:
  """A flag or config error as one line that names the offending key."""
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
    error = error.args[0]
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  text = text.strip()
  unknown = suggestion = None
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections names only the last part
    first, *rest = text.splitlines()
    leaf = first.strip().strip("\"'")
    match = re.search(r'Did you mean "([^"]+)"', text)
    suggestion = match.group(1) if match else None
    paths = [a[2:].split("=")[0].split(".")[1:] for a in argv if a.startswith("--config.")]
    unknown = next((".".join(p[:p.index(leaf) + 1]) for p in paths if leaf in p), leaf)
  elif text.startswith("Unknown command line flag 'config."):
    unknown = text.split("'")[1][len("config."):]
  if unknown is not None:
    line = f"--config.{unknown}: the config has no field {unknown!r}"
    if suggestion:
      line += f"; did you mean {suggestion!r}?"
    return line
  for literal, expected in (("invalid literal for int()", "an integer"),
                            ("could not convert string to float", "a number")):
    if literal in text:
      return f"{text.split(': ')[0].removeprefix('flag ')}: expected {expected}"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Traceback" in text:  # get_config raised: keep the flag and the exception's own message
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"error: {one_line(e, argv)}", file=sys.stderr)
    sys.exit(2)


