"""Runs of several methods with one command, then their Table 3.

  python -m iab_jax.sweep --preset minibench --workdir workdir/sweep
  python -m iab_jax.sweep --preset minibench --methods dct_cnn,fsd --workdir workdir/sweep

The `minibench` preset trains every registered method with its own mini-bench sizes
(`configs/<m>.py:standard,minibench`: the built-in mini-bench, built on first use; random
initialisation where a pretrained file is absent) and tests it at the seven levels. Each run is
its own process, so one method failing does not stop the others, and its wall time is measured
from outside. A finished run is not run again (its results are reused); a killed one resumes.
At the end, `iab_jax.report` writes Table 3 to <workdir>/<preset>/report and prints it, and the
sweep prints each method's run time and clean accuracy against chance.

Other presets: `runlocal` (each method's seconds-long smoke test on the mini-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Sequence

# The methods a preset runs, in Table 3's order; each has configs/<name>.py.
METHODS = ("resnet50", "dct_cnn", "hifi_net", "defl", "dna_det", "repmix", "patch_forensics",
           "patchcraft", "ssp", "fsd", "clip_lr")
PRESETS = {"minibench": "standard,minibench", "runlocal": "standard,runlocal,minibench"}


def run_one(method: str, arg: str, workdir: str, extra: Sequence[str] = ()) -> dict:
  """Runs configs/<method>.py:<arg> in its own process; what happened."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, "-m", "iab_jax.main", f"--config={root}/configs/{method}.py:{arg}",
             f"--workdir={workdir}", *extra]
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  with open(os.path.join(workdir, "sweep.log"), "a") as log:
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=root + os.pathsep
                                      + os.environ.get("PYTHONPATH", "")))
  return {"method": method, "status": status, "seconds": round(time.perf_counter() - start, 1),
          "workdir": workdir}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="minibench")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated (default: {','.join(METHODS)})")
  parser.add_argument("--workdir", default="workdir/sweep")
  args, extra = parser.parse_known_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    print(f"error: --methods: unknown {unknown[0]!r}; known: {', '.join(METHODS)}",
          file=sys.stderr)
    return 2
  bad = [e for e in extra if not e.startswith("--config.")]
  if bad:
    print(f"error: unknown flag {bad[0]!r}; only --config.<key>=<value> overrides pass through",
          file=sys.stderr)
    return 2
  outcomes = []
  for method in methods:
    workdir = os.path.join(args.workdir, args.preset, method)
    print(f"{method}: configs/{method}.py:{PRESETS[args.preset]} -> {workdir}", flush=True)
    outcome = run_one(method, PRESETS[args.preset], workdir, extra)
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
      with open(results_path) as f:
        results = json.load(f)
      clean = results["evals"]["test"]["levels"]["0"]["accuracy"]
      chance = results["baselines"]["chance"]
      outcome.update(clean=clean, chance=chance, times_chance=clean / chance,
                     train_seconds=results["timing"].get("train_seconds"),
                     run_seconds=results["timing"].get("total_seconds"))
    outcomes.append(outcome)
    print(f"{method}: exit {outcome['status']}, {outcome['seconds']:.0f} s in this sweep"
          + (f", clean accuracy {outcome['clean']:.3f} = {outcome['times_chance']:.1f}x chance"
             if "clean" in outcome else f" (see {workdir}/sweep.log)"), flush=True)
  with open(os.path.join(args.workdir, f"sweep_{args.preset}.json"), "w") as f:
    json.dump(outcomes, f, indent=1)
  finished = [o["workdir"] for o in outcomes if "clean" in o]
  if finished:
    from iab_jax import report

    report.main(["--runs", *finished, "--out", os.path.join(args.workdir, args.preset, "report"),
                 "--no_summaries"])  # prints Table 3
  # "run s" is the run's own time from its results (a reused run's, when it finished earlier);
  # "sweep s" what this sweep spent on it, process start included.
  print("method      exit   run s  sweep s  clean   x chance")
  for o in outcomes:
    run_s = o.get("run_seconds")
    print(f"{o['method']:<11} {o['status']:>4}  {'-' if run_s is None else f'{run_s:.0f}':>6}  "
          f"{o['seconds']:>7.0f}  "
          + (f"{o['clean']:.3f}  {o['times_chance']:>6.1f}" if "clean" in o else "  -       -"))
  return 0 if all(o["status"] == 0 for o in outcomes) else 1


if __name__ == "__main__":
  sys.exit(main())
