"""Entry point: `python -m iab_jax.main --config configs/<method>.py:<task> --workdir DIR`.

Flags and dispatch only: the config names a method, the method names its training loop
(iab_jax/trainers), and the loop does the rest. `--config.key=value` overrides any config
field. Every process of a multi-host run (TPU pod slice, multi-node GPU) runs the same command;
`--distributed` (or config.distributed) makes each call `jax.distributed.initialize()` first,
which finds its coordinator on TPU VMs and under Slurm, or from the flags below.
"""

from __future__ import annotations

import os
import sys

from iab_jax import console

console.quiet_libraries()  # before anything imports TensorFlow or JAX

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from iab_jax import cli, runs  # noqa: E402
from iab_jax.cli import ConfigError, run, validate  # noqa: E402,F401  (for callers and tests)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/<method>.py:<task>, e.g. configs/resnet50.py:semantic1",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results")
_RETEST = flags.DEFINE_bool("retest", False,
                            "test a finished run again instead of showing its results")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "call jax.distributed.initialize() (multi-host runs)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.configure(console.verbosity_given())
  config = _CONFIG.value
  try:
    config.keys()  # config_flags defers a config file's load failure to the first access
  except OSError as e:
    print(f"error: --config: {str(e).strip().splitlines()[-1].strip()}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value
  existed = os.path.exists(workdir)
  try:
    validate(config, workdir)
    results = None if _RETEST.value else runs.finished(config, workdir)
    if results is not None:
      console.say("%s has finished (results of %s); showing them. --retest tests it again.",
                  workdir, results.get("created", "?"))
    else:
      if _DISTRIBUTED.value or config.get("distributed", False):
        import jax

        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
      results = run(config, workdir)
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure ends the process
    cli.exit_on_error(e, workdir=workdir, workdir_existed=existed)
  cli.print_table(results)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
