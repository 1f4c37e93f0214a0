"""Entry point: `python -m iab_jax.main --config configs/<method>.py:<task> --workdir DIR`.

Flags and dispatch only: the config names a method, the method names its training loop
(iab_jax/trainers), and the loop does the rest. `--config.key=value` overrides any config
field. Every process of a multi-host run (TPU pod slice, multi-node GPU) runs the same command;
`--distributed` (or config.distributed) makes each call `jax.distributed.initialize()` first,
which finds its coordinator on TPU VMs and under Slurm, or from the flags below.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/<method>.py:<task>, e.g. configs/resnet50.py:semantic1",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() (multi-host runs)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


class ConfigError(ValueError):
  """A config that cannot run; its message names the key and what was expected."""


def validate(config) -> None:
  """Checks what a run needs before any work starts, so a typo fails in a second, not an hour."""
  from iab_jax import methods, tasks

  for key in ("method", "task", "input", "evals", "seed", "log_every_steps"):
    if key not in config:
      raise ConfigError(f"config.{key} is missing")
  try:
    tasks.parse_task(config.task)
  except ValueError as e:
    raise ConfigError(f"config.task: {e}") from None
  if config.method not in methods.names():
    raise ConfigError(f"config.method={config.method!r} is not a known method; known: "
                      f"{', '.join(methods.names())}")
  for key in ("batch_size", "eval_batch_size"):
    value = config.input.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"config.input.{key}={value!r}; expected a positive integer")
  if "num_epochs" in config and (not isinstance(config.num_epochs, int) or config.num_epochs < 1):
    raise ConfigError(f"config.num_epochs={config.num_epochs!r}; expected an integer >= 1")
  for name, cfg in config.evals.items():
    levels = cfg.get("levels", [0])
    if any(not isinstance(k, int) or not 0 <= k <= 6 for k in levels):
      raise ConfigError(f"config.evals.{name}.levels={list(levels)!r}; expected levels in 0..6")


def run(config, workdir: str):
  """Validates `config` and runs its method's training loop; returns the results dict."""
  from iab_jax import methods, trainers

  validate(config)
  method_cls = methods.get(config.method)
  return trainers.get(method_cls.trainer).train_and_evaluate(config, workdir)


class _QuietLibraries(std_logging.Filter):
  """Drops Orbax's per-save INFO chatter, which would bury the run's own progress lines."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  try:
    config.keys()  # config_flags defers a config file's load failure to the first access
  except OSError as e:
    print(f"error: --config: {str(e).strip().splitlines()[-1].strip()}", file=sys.stderr)
    sys.exit(2)
  if _DISTRIBUTED.value or config.get("distributed", False):
    import jax

    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  try:
    results = run(config, _WORKDIR.value)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    if isinstance(e, ValueError) and not isinstance(e, ConfigError) and not str(e).startswith(
        ("config.", "manifest", "task")):
      raise  # not a user error: keep the traceback
    # A user error, not a bug: one line, no traceback.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from iab_jax import report

  import jax

  if jax.process_index() == 0:
    print(report.to_markdown(report.table3([results])))


def _one_line(error: BaseException, argv) -> str:
  """A flag or config error as one line that names the offending key."""
  text = str(error).strip()
  unknown = None
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections names only the last part
    leaf = text.strip("\"'")
    paths = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
    unknown = next((p[len("config."):] for p in paths if p.split(".")[-1] == leaf), leaf)
  elif text.startswith("Unknown command line flag 'config."):
    unknown = text.split("'")[1][len("config."):]
  if unknown is not None:
    return f"--config.{unknown}: the config has no field {unknown!r}"
  for literal, expected in (("invalid literal for int()", "an integer"),
                            ("could not convert string to float", "a number")):
    if literal in text:
      return f"{text.split(': ')[0].removeprefix('flag ')}: expected {expected}"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Traceback" in text:  # get_config raised: keep the flag and the exception's own message
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"error: {_one_line(e, argv)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
