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

Other presets: `runlocal` (each method's seconds-long smoke test on the mini-bench), and
`fingerprints`: One-for-All against frozen features on the mini-bench, image-to-model
verification and the five open-set folds (FINGERPRINT_PLAN: the OFA simulator, the extractor that
names it, its open-set heads that name the extractor, and the same evaluators on ResNet-50 and
CLIP ViT features), then the image-to-model and open-set tables and each of them split by whether
a generator's up-sampler, activation and norm lie inside the simulator's search space.

Detection (the ACM paper's protocol, iab_jax.evaluators.detection), on the mini-bench:

  python -m iab_jax.sweep --preset detection --workdir workdir/sweep
  python -m iab_jax.sweep --preset detection_fractions --workdir workdir/sweep \
      --fractions 0.01,0.1,1

`detection` trains ACM on detection:<generator> (--generator, default mini_bicubic) with the real
images as the autoencoder's class and with the generator's (Table 3's variant), a linear probe on
the same frozen CLIP features (Features+LR, UnivFD's recipe) on the same task, and scores every
finished run of the `minibench` preset as a detector (iab_jax.evaluate --evals detection); then
the detection tables. `detection_fractions` trains ACM and the probe on fractions of the task's
training set (config.input.train_fraction, the smaller draws inside the larger) and prints mean AP
and accuracy per fraction.
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


# (run name, method, config arg, extra flags); "{name}" in a flag is that earlier run's workdir.
FEATURE_BASELINES = (("resnet50_features", "standard,minibench"),
                     ("clip_features", "standard,minibench,backbone=clip_vit"))
FINGERPRINT_PLAN = (
    ("ofa_simulator", "ofa_simulator", "standard,minibench", ()),
    ("ofa", "ofa", "standard,minibench", ("--config.simulator.workdir={ofa_simulator}",)),
    *((name, "embedding_lr", arg, ()) for name, arg in FEATURE_BASELINES),
    *((f"ofa_openset{k}", "ofa", f"openset{k},minibench", ("--config.extractor.workdir={ofa}",))
      for k in range(5)),
    *((f"{name}_openset{k}", "embedding_lr", arg.replace("standard", f"openset{k}"), ())
      for name, arg in FEATURE_BASELINES for k in range(5)),
)


DETECTION_GENERATOR = "mini_bicubic"  # the mini-bench generator detection presets train on
DETECTION_FRACTIONS = (0.01, 0.1, 1.0)
# (run name, method, config arg, extra flags) of the detection presets; "{g}": the generator.
DETECTION_PLAN = (
    ("acm_{g}", "acm", "detection:{g},minibench", ()),
    ("acm_{g}_source_{g}", "acm", "detection:{g},minibench", ("--config.acm.source={g}",)),
    ("probe_{g}", "embedding_lr", "detection:{g},minibench,backbone=clip_vit", ()),
)


def detection_plan(generator: str, fractions: Sequence[float] = ()) -> list[tuple]:
  """DETECTION_PLAN for one generator; with fractions, ACM (real source) and the probe at each
  fraction of the training set instead (1.0 is the plain run)."""
  plan = [tuple(x.replace("{g}", generator) if isinstance(x, str) else
                tuple(f.replace("{g}", generator) for f in x) for x in entry)
          for entry in DETECTION_PLAN]
  if not fractions:
    return plan
  out = []
  for name, method, arg, flags in (plan[0], plan[2]):
    for fraction in fractions:
      if fraction == 1.0:
        out.append((name, method, arg, flags))
        continue
      batch = _fraction_batch(method, arg, fraction)
      out.append((f"{name}_f{fraction:g}", method, arg,
                  (*flags, f"--config.input.train_fraction={fraction:g}",
                   f"--config.input.batch_size={batch}")))
  return out


def _fraction_batch(method: str, arg: str, fraction: float) -> int:
  """The config's batch size, or fewer when the fraction leaves fewer training images."""
  import importlib

  from iab_jax import tasks

  config = importlib.import_module(f"configs.{method}").get_config(arg)
  config.input.train_fraction = fraction
  data = tasks.load(config.input, tasks.parse_task(config.task))
  return int(min(config.input.batch_size, len(data.positions("train"))))


def score_as_detectors(root: str, methods: Sequence[str]) -> list[str]:
  """`iab_jax.evaluate --evals detection` on each finished run of the minibench preset; the
  results files written (a run scored before is not scored again)."""
  made = []
  for method in methods:
    workdir = os.path.join(root, "minibench", method)
    target = os.path.join(workdir, "results_detection.json")
    if not os.path.exists(os.path.join(workdir, "results.json")):
      print(f"{method}: no finished minibench run in {workdir} (run --preset minibench first); "
            "not scored as a detector", flush=True)
      continue
    if not os.path.exists(target):
      start = time.perf_counter()
      with open(os.path.join(workdir, "sweep.log"), "a") as log:
        status = subprocess.call([sys.executable, "-m", "iab_jax.evaluate",
                                  f"--workdir={workdir}", "--evals=detection"], stdout=log,
                                 stderr=subprocess.STDOUT, env=_env())
      print(f"{method}: scored as a detector, exit {status}, "
            f"{time.perf_counter() - start:.0f} s", flush=True)
    if os.path.exists(target):
      made.append(target)
  return made


def detection(root: str, extra: Sequence[str], generator: str, methods: Sequence[str],
              fractions: Sequence[float] = ()) -> int:
  """The `detection` and `detection_fractions` presets."""
  preset = "detection_fractions" if fractions else "detection"
  outcomes = run_plan(detection_plan(generator, fractions), preset, root, extra)
  finished = [o["workdir"] for o in outcomes
              if os.path.exists(os.path.join(o["workdir"], "results.json"))]
  if not fractions:
    finished += score_as_detectors(root, methods)
  with open(os.path.join(root, f"sweep_{preset}.json"), "w") as f:
    json.dump(outcomes, f, indent=1)
  if finished:
    from iab_jax import report

    report.main(["--runs", *finished, "--out", os.path.join(root, preset, "report"),
                 "--no_summaries"])
  if fractions:
    summary = fraction_summary(outcomes, fractions)
    with open(os.path.join(root, preset, "fractions.md"), "w") as f:
      f.write(summary + "\n")
    print(summary)
  return 0 if all(o["status"] == 0 for o in outcomes) else 1


def fraction_summary(outcomes: Sequence[dict], fractions: Sequence[float]) -> str:
  """Mean AP / accuracy (%) over the generators, clean, per method and training fraction."""
  rows: dict[str, dict[float, str]] = {}
  for o in outcomes:
    path = os.path.join(o["workdir"], "results.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      results = json.load(f)
    level = results["evals"]["detection"]["levels"]["0"]
    fraction = float(results["config"]["input"].get("train_fraction", 1.0))
    name = results.get("method_display") or o["method"]
    rows.setdefault(name, {})[fraction] = (f"{100 * level['ap']:.1f} / "
                                           f"{100 * level['accuracy']:.1f}")
  head = ["method"] + [f"{100 * f:g}% AP / ACC" for f in fractions]
  lines = ["| " + " | ".join(head) + " |", "|:--|" + "--:|" * len(fractions)]
  for name, cells in rows.items():
    lines.append(f"| {name} | " + " | ".join(cells.get(f, "–") for f in fractions) + " |")
  return "\n".join(lines)


def search_space_groups() -> dict[str, list[str]]:
  """The mini-bench's generators by how much of them the OFA simulator's search space holds:
  "inside" (up-sampler, activation and norm all among its choices), "partly", "outside" (none)."""
  from data_prep import minibench
  from iab_jax.models import ofa_simulator

  groups: dict[str, list[str]] = {"inside": [], "partly": [], "outside": []}
  for g in minibench.GENERATORS:
    hits = [g.upsample in ofa_simulator.UPSAMPLERS, g.activation in ofa_simulator.ACTIVATIONS,
            g.norm in ofa_simulator.NORMS]
    groups["inside" if all(hits) else "partly" if any(hits) else "outside"].append(g.name)
  return groups


def fingerprint_summary(results: dict[str, dict]) -> str:
  """A Markdown table: per run, image-to-model AUC (one-vs-one, %) and open-set AUROC of the
  unknown generators (%, over the folds where they were unknown) by search-space group, and the
  open-set closed-set accuracy, AUROC and OSCR averaged over the folds."""
  import numpy as np

  groups = search_space_groups()
  families = {}
  for name, run in results.items():
    family = name.split("_openset")[0]
    families.setdefault(family, {"i2m": None, "folds": []})
    evals = run.get("evals", {})
    if "image_to_model" in evals:
      families[family]["i2m"] = evals["image_to_model"]["levels"]["0"]
    if "openset" in evals:
      families[family]["folds"].append(evals["openset"]["levels"]["0"])
  rows = []
  for family, got in families.items():
    if got["i2m"] is None and not got["folds"]:  # the simulator: no evaluation of its own
      continue
    row = [family]
    for group in ("inside", "partly", "outside"):
      per = (got["i2m"] or {}).get("auc_ovo_per_target", {})
      values = [per[g] for g in groups[group] if g in per]
      row.append(f"{100 * np.mean(values):.1f}" if values else "–")
    for group in ("inside", "partly", "outside"):
      values = [f["per_unknown_generator"][g]["auroc"] for f in got["folds"]
                for g in groups[group] if g in f.get("per_unknown_generator", {})
                and f["per_unknown_generator"][g]["auroc"] is not None]
      row.append(f"{100 * np.mean(values):.1f}" if values else "–")
    for key in ("closed_set_accuracy", "auroc", "oscr"):
      values = [f[key] for f in got["folds"] if f.get(key) is not None]
      row.append(f"{100 * np.mean(values):.1f}±{100 * np.std(values):.1f}" if values else "–")
    rows.append(row)
  head = ["run", "I2M inside", "I2M partly", "I2M outside", "unknown AUROC inside",
          "unknown AUROC partly", "unknown AUROC outside", "closed acc", "AUROC", "OSCR"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--"] + ["--:"] * (len(head) - 1))
           + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  legend = "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
  return "\n".join(lines) + f"\n\nSearch-space groups of the mini-bench's generators: {legend}."


def run_plan(plan, preset: str, root: str, extra: Sequence[str]) -> list[dict]:
  """Runs a plan's entries in order, each naming the workdirs of earlier ones."""
  workdirs, outcomes = {}, []
  for name, method, arg, flags in plan:
    workdir = os.path.join(root, preset, name)
    workdirs[name] = workdir
    flags = [f.format(**workdirs) for f in flags]
    print(f"{name}: configs/{method}.py:{arg} {' '.join(flags)} -> {workdir}", flush=True)
    outcome = run_one(method, arg, workdir, [*flags, *extra])
    outcome["name"] = name
    print(f"{name}: exit {outcome['status']}, {outcome['seconds']:.0f} s", flush=True)
    outcomes.append(outcome)
  return outcomes


def run_one(method: str, arg: str, workdir: str, extra: Sequence[str] = ()) -> dict:
  """Runs configs/<method>.py:<arg> in its own process; what happened."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, "-m", "iab_jax.main", f"--config={root}/configs/{method}.py:{arg}",
             f"--workdir={workdir}", *extra]
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  with open(os.path.join(workdir, "sweep.log"), "a") as log:
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                             env=_env())
  return {"method": method, "status": status, "seconds": round(time.perf_counter() - start, 1),
          "workdir": workdir}


def _env() -> dict:
  """The environment of a run's process: this checkout first on the path."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", choices=sorted([*PRESETS, "fingerprints", "detection",
                                                   "detection_fractions"]),
                      default="minibench")
  parser.add_argument("--generator", default=DETECTION_GENERATOR,
                      help="detection presets: the generator the detectors train on")
  parser.add_argument("--fractions", default=",".join(f"{f:g}" for f in DETECTION_FRACTIONS),
                      help="detection_fractions: training-set fractions in (0, 1]")
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
  if args.preset == "fingerprints":
    return fingerprints(args.workdir, extra)
  if args.preset.startswith("detection"):
    fractions = ()
    if args.preset == "detection_fractions":
      try:
        fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
      except ValueError:
        fractions = ()
      if not fractions or not all(0 < f <= 1 for f in fractions):
        print(f"error: --fractions={args.fractions!r}: expected fractions in (0, 1], e.g. "
              "0.01,0.1,1", file=sys.stderr)
        return 2
    return detection(args.workdir, extra, args.generator, methods, fractions)
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


def fingerprints(root: str, extra: Sequence[str]) -> int:
  """The `fingerprints` preset: FINGERPRINT_PLAN, its tables and the search-space summary."""
  outcomes = run_plan(FINGERPRINT_PLAN, "fingerprints", root, extra)
  results = {}
  for o in outcomes:
    path = os.path.join(o["workdir"], "results.json")
    if os.path.exists(path):
      with open(path) as f:
        results[o["name"]] = json.load(f)
  with open(os.path.join(root, "sweep_fingerprints.json"), "w") as f:
    json.dump(outcomes, f, indent=1)
  finished = [o["workdir"] for o in outcomes if o["name"] in results and results[o["name"]]["evals"]]
  if finished:
    from iab_jax import report

    report.main(["--runs", *finished, "--out", os.path.join(root, "fingerprints", "report"),
                 "--no_summaries"])
  summary = fingerprint_summary(results)
  with open(os.path.join(root, "fingerprints", "summary.md"), "w") as f:
    f.write(summary + "\n")
  print(summary)
  print("run                          exit   run s")
  for o in outcomes:
    run_s = results.get(o["name"], {}).get("timing", {}).get("total_seconds")
    print(f"{o['name']:<28} {o['status']:>4}  {'-' if run_s is None else f'{run_s:.0f}':>6}")
  return 0 if all(o["status"] == 0 for o in outcomes) else 1


if __name__ == "__main__":
  sys.exit(main())
