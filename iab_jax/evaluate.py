"""Tests a finished (or interrupted) run's checkpoint again, on its own data or on other data.

  python -m iab_jax.evaluate --workdir RUN
  python -m iab_jax.evaluate --workdir RUN --config.input.data_dir=/data/other \
      --config.input.manifest=standard --name other
  python -m iab_jax.evaluate --workdir RUN --config.evals.test.levels=0,3 --checkpoint last
  python -m iab_jax.evaluate --workdir RUN --evals detection

The run's own config (RUN/config.json) is the starting point; `--config.key=value` overrides any
field, typically the data (`input.data_dir`, `input.manifest`) or the evaluations (`evals.*`). The
model keeps the run's classes: on other data, records of generators the run does not know are
left out of the scores (their count is in the results), and classes absent from the data have no
per-class accuracy. Only the model (parameters and batch statistics) is restored, not the
optimizer state. The results go to RUN/results_<name>.json, in the format of results.json, and
Table 3 of them is printed; `python -m iab_jax.report --runs RUN/results_<name>.json` rebuilds it.

--name defaults to the data directory's name and the manifest's, e.g. `results_iab_standard.json`.

--evals runs only the named evals of the config. A standard eval the run's config lacks (a run
made before it existed) is added with its defaults: `--evals detection` scores any finished run as
a real/fake detector (1 − P(real), iab_jax.evaluators.detection) into results_detection.json.
"""

from __future__ import annotations

import os
import re
import sys

from iab_jax import console

console.quiet_libraries()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from iab_jax import cli, errors, runs  # noqa: E402



# Evals `--evals` may add to a run whose config lacks them, with their defaults.
def _standard_evals() -> dict:
  from iab_jax import evaluators

  return {"detection": evaluators.detection_config()}


def select_evals(config, names: str) -> None:
  """Keeps only the comma-separated evals `names` in config.evals, adding _standard_evals' that
  the config lacks; a name that is neither is an error naming the known ones."""
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  known = {**_standard_evals(), **config.evals.to_dict()}
  unknown = [n for n in wanted if n not in known]
  if unknown or not wanted:
    raise errors.UserError(f"--evals={names!r}: expected names among {', '.join(sorted(known))}")
  with config.unlocked():
    config.evals = {n: known[n] for n in wanted}


def _default_name(run_config, config, evals: str = "") -> str:
  if (config.input.data_dir == run_config.input.data_dir
      and config.input.manifest == run_config.input.manifest):
    return evals.replace(",", "_") if evals else "retest"
  data = os.path.basename(os.path.normpath(config.input.data_dir)) or "data"
  manifest = os.path.splitext(os.path.basename(config.input.manifest or "default"))[0]
  return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{data}_{manifest}")


def evaluate(config, workdir: str, name: str, which: str = "best") -> dict:
  """Restores the run's model from `which` checkpoint and runs config.evals; returns the results
  (also written to <workdir>/results_<name>.json on process 0)."""
  import time

  import jax
  import jax.numpy as jnp

  from iab_jax import checkpointing, evaluators, methods, sharding, tasks
  from iab_jax.trainers import supervised

  start = time.time()
  run_results = runs.read_results(os.path.join(workdir, runs.RESULTS_JSON)) or {}
  task = tasks.parse_task(config.task)
  ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS))
  step = ckpt.step_for(which)
  meta = ckpt.meta(step)
  # The run's classes: from its results, else from the manifest it trained on.
  classes = runs.run_classes(workdir)
  if classes is None:
    trained = runs.load_config(workdir)
    classes = tasks.load(trained.input, task).classes
  data = tasks.load(config.input, task, classes=classes, any_protocol=True)
  # "all" (image-to-model verification over every record) is not a manifest split.
  named = [s for e in config.evals.values()
           for s in (e.get("split", "test"), e.get("unknown_split")) if s and s != "all"]
  splits = sorted(set(named) or {"test"})
  missing = [s for s in splits if s not in data.manifest.splits]
  if missing:
    raise errors.UserError(f"manifest {data.manifest.path!r} has no split {missing[0]!r} (it has "
                           f"{', '.join(data.manifest.splits)}); set --config.evals.<name>.split")
  mesh = sharding.make_mesh()
  method = methods.get(config.method)(config, classes)
  _, eval_transform = method.transforms()
  example = supervised.example_image(data, eval_transform, split=splits[0])
  variables = ckpt.restore_variables(
      step, lambda: method.init(jax.random.key(0), jax.tree.map(lambda x: jnp.asarray(x[None]),
                                                                example), pretrained=False),
      sharding.replicated(mesh))
  ckpt.close()
  known = int((data.labels[data.positions(splits[0])] >= 0).sum())
  console.say("%s: %s checkpoint, step %d (epoch %d, val accuracy %s) on %s, manifest %s "
              "(%d of its %s images are of the run's %d classes)", workdir, which, step,
              meta.get("epoch", -1), meta.get("val_accuracy"), data.dataset.root,
              data.manifest.name, known, splits[0], len(classes))
  evals = evaluators.run_all(config, method=method, data=data, mesh=mesh, variables=variables,
                             transform=eval_transform)
  results = supervised.make_results(
      config, method, task, data, evals,
      checkpoint={"step": int(step), "which": which, "phase": meta.get("phase"),
                  "epoch": meta.get("epoch"), "val_accuracy": meta.get("val_accuracy")},
      timing={"total_seconds": round(time.time() - start, 3)}, workdir=workdir,
      evaluation={"name": name, "trained_on": {
          "dataset": run_results.get("dataset"), "manifest": run_results.get("manifest")}})
  if jax.process_index() == 0:
    supervised.write_results(results, os.path.join(workdir, f"results_{name}.json"))
  return results


def main(argv, config) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.configure(console.verbosity_given())
  workdir = flags.FLAGS.workdir
  try:
    run_config = runs.load_config(workdir)
    if flags.FLAGS.evals:
      select_evals(config, flags.FLAGS.evals)
    name = flags.FLAGS.name or _default_name(run_config, config, flags.FLAGS.evals or "")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
      raise errors.UserError(f"--name={name!r}; expected letters, digits, '.', '_' or '-'")
    cli.validate(config)
    results = evaluate(config, workdir, name, flags.FLAGS.checkpoint)
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure ends the process
    cli.exit_on_error(e)
  cli.print_table(results)


def _workdir_from_argv(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def run_cli(argv=None) -> None:
  """The command line: the run's config becomes the --config flag, so --config.x=y overrides it."""
  argv = list(sys.argv if argv is None else argv)
  workdir = _workdir_from_argv(argv)
  if workdir is None:
    print("error: --workdir RUN is required (a run directory of python -m iab_jax.main)",
          file=sys.stderr)
    sys.exit(2)
  try:
    run_config = runs.load_config(workdir)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  run_config.lock()
  # Defined here, not at import: the module is also a library (and iab_jax.main defines flags of
  # the same names in the same absl registry).
  flags.DEFINE_string("workdir", None, "the run directory (holds config.json and checkpoints/)")
  flags.DEFINE_string("name", None, "results go to <workdir>/results_<name>.json")
  flags.DEFINE_string("evals", None, "comma-separated evals to run (default: all of the "
                      "config's); `detection` can be added to any run")
  flags.DEFINE_string("checkpoint", "best", "which checkpoint: best (by validation), last, or a "
                      "saved step")
  config_flag = config_flags.DEFINE_config_dict("config", run_config,
                                                "the run's config; --config.key=value overrides")
  app.run(lambda args: main(args, config_flag.value), argv=argv,
          flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run_cli()
