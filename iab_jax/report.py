"""Table 3 of the ImageAttributionBench paper, rebuilt from the results JSONs runs write.

  python -m iab_jax.report --runs workdir/runs --out workdir/report [--latest]

Each `--runs` path is a run directory holding `results.json`, a results file itself, or a folder
searched recursively for `results.json`. Only those files are read, so a table can be rebuilt
anywhere the JSONs were copied to, without checkpoints or data.

Table 3 has one row per method. The standard task gives clean accuracy, accuracy under each of
the six degradations and their mean; the semantic task (train on one semantic class, test on all)
gives one cell per training class, "clean/degraded" with degraded the mean over the six levels,
and their mean. An Avg row averages each column over the methods that have it. In each column the
best method is bold and the second underlined; a semantic cell marks its two halves separately.

Runs of the `group` task (a user's own data split by groups) fill the standard columns, in rows of
their own ("<method> (group split)"). Under the table, the baselines each run recorded: chance, and a
classifier that sees only each image's file format and size (iab_jax.data.shortcuts); an attributor
that does no better than the latter may have learnt the file, not the generator.

Runs with OFA's evaluations add its tables: image_to_model.md/.csv (Tables 1-2 of Fei et al.:
rows the target generators, one column per run, cells the mean one-vs-one AUC, last row Avg ± std
over the targets) from evals of type image_to_model, and open_set.md/.csv (Tables 4-5: one row per
method, closed-set accuracy, AUROC and OSCR per fold and their mean ± std over folds) from the
open_set evals of `openset:<k>` runs.

Runs with a detection eval (every run by default: an attributor is a detector by 1 - P(real),
iab_jax/evaluators/detection.py) add the ACM paper's tables: detection_ap.md/.csv and
detection_accuracy.md/.csv (Tables 1-2: one row per run, a column per generator and the Avg),
detection_sources.md/.csv (Table 3: AP and ACC over the generators seen in training, the unseen
ones, and all), and, when degraded levels were scored, detection_levels_ap/_accuracy.md/.csv (the
mean over generators at each degradation level). Evals that were skipped (a run without a class
"real") are left out.

Outputs in --out: table3.md, table3.csv, table3.tex (when a run is a standard, semantic or group
run), image_to_model.md/.csv, open_set.md/.csv and the detection tables (when runs carry those
evals), one confusion-matrix PNG per run and eval, and TensorBoard summaries of Table 3 through a
CLU metric writer.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import glob
import io
import json
import os
import re
import sys
from typing import Any, Iterable, Sequence

import numpy as np

from iab_jax.data import degradations, generators

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "iab_jax.results"
RESULTS_VERSION = 1
TABLE_EVAL = "test"  # the eval Table 3 reads; the others only get confusion plots

# Column of each degradation level in the standard half: (flat key, title). Index = level.
STANDARD_LEVEL_COLUMNS = (
    ("clean", "Clean Acc. (%)"),
    ("ds_0.5", "DS (0.5x)"),
    ("ds_0.25", "DS (0.25x)"),
    ("jpeg_65", "JPEG (q=65)"),
    ("jpeg_30", "JPEG (q=30)"),
    ("blur_3", "Blur (σ=3)"),
    ("blur_5", "Blur (σ=5)"),
)
assert len(STANDARD_LEVEL_COLUMNS) == degradations.NUM_LEVELS
DEGRADED_LEVELS = tuple(range(1, degradations.NUM_LEVELS))

# The paper's three semantic tasks, in its column order; other training classes follow them.
PAPER_SEMANTICS = ("cat", "FFHQ", "bedroom")
SEMANTIC_TITLES = {"cat": "Cat", "FFHQ": "Human Face", "bedroom": "Bedroom",
                   "celebahq": "CelebA-HQ"}

STANDARD_SECTION = "Standard Task"
SEMANTIC_SECTION = "Semantic Task"
AVG_ROW = "Avg"
AVG_METHOD = "avg"  # the Avg row's name in scalar summaries
MISSING = "–"
BEST, SECOND = 1, 2


@dataclasses.dataclass(frozen=True)
class Column:
  """One displayed column; a semantic cell shows two numbers, clean and mean degraded."""

  section: str  # STANDARD_SECTION or SEMANTIC_SECTION
  title: str
  keys: tuple[str, ...]  # flat keys of its numbers, e.g. ("semantic/cat/clean", ".../degraded")


@dataclasses.dataclass
class Table:
  """Table 3's numbers and marks; the renderers below only format these.

  `values` and `marks` have one row per entry of `rows` (the methods, then the Avg row) and one
  column per flat key. Values are accuracies in percent, NaN where a method lacks the cell.
  """

  header: tuple[Column, ...]
  rows: tuple[str, ...]  # display names of the methods, then AVG_ROW
  methods: tuple[str, ...]  # registry names of the methods (the Avg row has none)
  keys: tuple[str, ...]
  values: np.ndarray  # (len(rows), len(keys)) float64
  marks: np.ndarray  # (len(rows), len(keys)) BEST, SECOND or 0; the Avg row is never marked
  # Clean accuracy (%) of the baselines the runs recorded: {"chance"|"metadata": {key: value}},
  # keys the clean keys of the table ("standard/clean", "semantic/cat/clean").
  baselines: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Loading runs.


def _results_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if os.path.isfile(os.path.join(path, RESULTS_FILE)):
    return [os.path.join(path, RESULTS_FILE)]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--runs path {path!r} does not exist")
  found = sorted(glob.glob(os.path.join(path, "**", RESULTS_FILE), recursive=True))
  if not found:
    raise ValueError(f"no {RESULTS_FILE} under {path!r}")
  return found


def _read_results(path: str) -> dict[str, Any]:
  with open(path) as f:
    try:
      run = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(run, dict) or run.get("format") != RESULTS_FORMAT:
    raise ValueError(f"{path}: not an {RESULTS_FORMAT} file")
  if run.get("version") != RESULTS_VERSION:
    raise ValueError(f"{path}: results version {run.get('version')!r}, this report reads "
                     f"version {RESULTS_VERSION}")
  for key in ("method", "task"):
    if not isinstance(run.get(key), str) or not run[key]:
      raise ValueError(f"{path}: missing {key!r}")
  run["_path"] = path  # where it came from, for error messages; not part of the schema
  return run


def _created(run: dict[str, Any]) -> datetime.datetime:
  try:
    when = datetime.datetime.fromisoformat(run["created"])
  except (KeyError, TypeError, ValueError):
    raise ValueError(f"{run['_path']}: 'created' is missing or not an ISO 8601 time "
                     f"({run.get('created')!r}), so --latest cannot order it") from None
  # A time without zone is taken as UTC, so that it still compares with zoned ones.
  return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def train_fraction_label(run: dict[str, Any]) -> str:
  """'train 10%' for a run on a fraction of its training set (config.input.train_fraction),
  '' for a run on all of it."""
  fraction = float((((run.get("config") or {}).get("input") or {}).get("train_fraction")) or 1.0)
  return "" if fraction == 1.0 else f"train {100 * fraction:g}%"


def load_runs(paths: Iterable[str | os.PathLike], latest: bool = False) -> list[dict[str, Any]]:
  """Reads the results JSONs under `paths`, one per (method, task).

  Runs keep the order of `paths`, and sorted path order inside a searched folder; that order is
  the order of the table's rows. Each returned dict has the file's path under "_path".

  Raises:
    ValueError: a file is not a results file, or two runs have the same method and task and
      `latest` is False. With `latest`, the run with the newest "created" time is kept.
  """
  files, seen = [], set()
  for path in paths:
    for f in _results_files(os.fspath(path)):
      # Passing a folder and one of its runs should not count that run twice.
      real = os.path.realpath(f)
      if real not in seen:
        seen.add(real)
        files.append(f)

  chosen: dict[tuple[str, str], dict[str, Any]] = {}
  for run in map(_read_results, files):
    # A method's variants (Features+LR over ResNet-50 or CLIP, ACM's sources) differ by their
    # display name; runs on a fraction of the training set by that fraction.
    key = (run.get("method_display") or run["method"], run["task"], train_fraction_label(run))
    other = chosen.get(key)
    if other is None:
      chosen[key] = run
      continue
    if not latest:
      raise ValueError(
          f"method {key[0]!r}, task {key[1]!r}{', ' + key[2] if key[2] else ''} has two runs: "
          f"{other['_path']} and "
          f"{run['_path']}; pass --latest to keep the newer one, or name one of them")
    if _created(run) > _created(other):
      chosen[key] = run
  return list(chosen.values())


# ---------------------------------------------------------------------------------------------
# Building the table.


def semantic_title(name: str) -> str:
  """Column title of a training class: the paper's for its three, else the name capitalised."""
  if name in SEMANTIC_TITLES:
    return SEMANTIC_TITLES[name]
  # 'church' -> 'Church', but 'COCO' and 'ImageNet-1k' are already written as they should be.
  return name[:1].upper() + name[1:] if name.islower() else name


def _semantic_order(names: Iterable[str]) -> list[str]:
  rank = {n: i for i, n in enumerate(PAPER_SEMANTICS)}
  for n in generators.SEMANTIC_ORDER:
    rank.setdefault(n, len(rank))
  return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def _level_accuracies(run: dict[str, Any], eval_name: str) -> dict[int, float]:
  """Accuracy in percent of each level the run evaluated."""
  levels = (run.get("evals") or {}).get(eval_name, {}).get("levels") or {}
  out = {}
  for key, entry in levels.items():
    if isinstance(entry, dict) and entry.get("accuracy") is not None:
      out[int(key)] = 100.0 * float(entry["accuracy"])
  return out


def _mean_degraded(acc: dict[int, float]) -> float:
  # Like the run's own mean_degraded_accuracy: a mean over fewer levels is a different number.
  if all(level in acc for level in DEGRADED_LEVELS):
    return float(np.mean([acc[level] for level in DEGRADED_LEVELS]))
  return float("nan")


def _nanmean(values: Sequence[float]) -> float:
  values = [v for v in values if not np.isnan(v)]
  return float(np.mean(values)) if values else float("nan")


def _display_value(v: float) -> float:
  # Marks compare what the table shows: 89.74 and 89.66 both read 89.7 and tie.
  return float(f"{v:.1f}")


def _column_marks(column: np.ndarray) -> np.ndarray:
  """BEST for every method at the column's highest shown value, SECOND at the next one."""
  marks = np.zeros(column.shape, dtype=np.int8)
  shown = np.array([_display_value(v) if not np.isnan(v) else np.nan for v in column])
  distinct = np.unique(shown[~np.isnan(shown)])[::-1]
  if len(distinct) > 0:
    marks[shown == distinct[0]] = BEST
  if len(distinct) > 1:
    marks[shown == distinct[1]] = SECOND
  return marks


GROUP_SUFFIX = " (group split)"
BASELINE_TITLES = {"chance": "chance",
                   "metadata": "metadata only (majority label per file format and size, fit on "
                               "the training split)"}


def _baselines(run: dict[str, Any]) -> dict[str, float]:
  """The run's recorded baselines in percent: chance and the metadata-only classifier."""
  out = {}
  recorded = run.get("baselines") or {}
  if recorded.get("chance") is not None:
    out["chance"] = 100.0 * float(recorded["chance"])
  elif run.get("classes"):
    out["chance"] = 100.0 / len(run["classes"])
  metadata = recorded.get("metadata") or {}
  if metadata.get("accuracy") is not None:
    out["metadata"] = 100.0 * float(metadata["accuracy"])
  return out


def table3(runs: Sequence[dict[str, Any]], eval_name: str = TABLE_EVAL) -> Table:
  """Table 3 from runs as `load_runs` returns them; runs of other tasks, and results without
  the eval (e.g. `iab_jax.evaluate --evals detection`'s), are ignored."""
  display: dict[str, str] = {}  # row id -> display name, in first-seen order
  standard: dict[str, dict[int, float]] = {}
  semantic: dict[str, dict[str, dict[int, float]]] = {}
  where: dict[tuple[str, str], str] = {}
  baseline_values: dict[str, dict[str, list[float]]] = {}
  for run in runs:
    if eval_name not in (run.get("evals") or {}):
      continue
    method, task = run["method"], run["task"]
    row = method
    if task in ("standard", "group"):
      key = (method, task)
      if task == "group":  # the user's own split: same columns, a row of its own
        row = method + "@group"
    elif task.startswith("semantic:"):
      raw = task.split(":", 1)[1]
      key = (method, "semantic:" + (generators.semantic_name(raw) or raw))
    else:
      continue
    if key in where:
      raise ValueError(f"method {method!r}, task {key[1]!r} has two runs: {where[key]} and "
                       f"{run.get('_path', '?')}")
    where[key] = run.get("_path", "?")
    name = run.get("method_display") or method
    display.setdefault(row, name + (GROUP_SUFFIX if task == "group" else ""))
    acc = _level_accuracies(run, eval_name)
    if key[1] in ("standard", "group"):
      standard[row] = acc
      clean_key = "standard/clean"
    else:
      semantic.setdefault(row, {})[key[1].split(":", 1)[1]] = acc
      clean_key = f"semantic/{key[1].split(':', 1)[1]}/clean"
    for kind, value in _baselines(run).items():
      baseline_values.setdefault(kind, {}).setdefault(clean_key, []).append(value)
  if not display:
    raise ValueError(f"none of the {len(runs)} runs is a 'standard' or 'semantic:<class>' run")

  header = [Column(STANDARD_SECTION, title, (f"standard/{key}",))
            for key, title in STANDARD_LEVEL_COLUMNS]
  header.append(Column(STANDARD_SECTION, "Avg Acc.", ("standard/avg",)))
  classes = _semantic_order(list(PAPER_SEMANTICS) + [c for m in semantic.values() for c in m])
  for name in classes + ["avg"]:
    title = "Semantic Avg" if name == "avg" else f"Train on {semantic_title(name)}"
    header.append(Column(SEMANTIC_SECTION, title,
                         (f"semantic/{name}/clean", f"semantic/{name}/degraded")))
  keys = tuple(k for col in header for k in col.keys)

  methods = tuple(display)
  values = np.full((len(methods) + 1, len(keys)), np.nan)
  column = {k: i for i, k in enumerate(keys)}
  for r, method in enumerate(methods):
    row = values[r]
    acc = standard.get(method, {})
    for level, (key, _) in enumerate(STANDARD_LEVEL_COLUMNS):
      row[column[f"standard/{key}"]] = acc.get(level, np.nan)
    row[column["standard/avg"]] = _mean_degraded(acc)
    for name, acc in semantic.get(method, {}).items():
      row[column[f"semantic/{name}/clean"]] = acc.get(0, np.nan)
      row[column[f"semantic/{name}/degraded"]] = _mean_degraded(acc)
    for half in ("clean", "degraded"):
      row[column[f"semantic/avg/{half}"]] = _nanmean(
          [row[column[f"semantic/{name}/{half}"]] for name in classes])
  values[-1] = [_nanmean(values[:-1, k]) for k in range(len(keys))]

  marks = np.zeros(values.shape, dtype=np.int8)
  for k in range(len(keys)):
    marks[:-1, k] = _column_marks(values[:-1, k])
  baselines = {kind: {key: float(np.mean(v)) for key, v in per_key.items()}
               for kind, per_key in baseline_values.items()}
  return Table(header=tuple(header), rows=tuple(display[m] for m in methods) + (AVG_ROW,),
               methods=tuple(m.replace("@group", ":group") for m in methods), keys=keys,
               values=values, marks=marks, baselines=baselines)


def baseline_note(table: Table) -> str:
  """One line under the table: each baseline's clean accuracy per column that has one."""
  titles = {k: c.title for c in table.header for k in c.keys}
  parts = []
  for kind in ("chance", "metadata"):
    per_key = table.baselines.get(kind) or {}
    if not per_key:
      continue
    cells = ", ".join(f"{titles.get(k, k).replace('Clean Acc. (%)', 'standard')} {v:.1f}"
                      for k, v in sorted(per_key.items(), key=lambda kv: table.keys.index(kv[0])
                                         if kv[0] in table.keys else len(table.keys)))
    parts.append(f"{BASELINE_TITLES[kind]}: {cells}")
  return ("Baselines, clean accuracy (%): " + "; ".join(parts) + ".") if parts else ""


# ---------------------------------------------------------------------------------------------
# Rendering.


def _cell(table: Table, r: int, col: Column, mark_fmt: dict[int, str], missing: str) -> str:
  """One displayed cell: its numbers joined by '/', each wrapped in its mark's format."""
  index = [table.keys.index(k) for k in col.keys]
  if all(np.isnan(table.values[r, k]) for k in index):
    return missing
  parts = []
  for k in index:
    v = table.values[r, k]
    text = missing if np.isnan(v) else f"{v:.1f}"
    parts.append(mark_fmt.get(int(table.marks[r, k]), "{}").format(text))
  return "/".join(parts)


def to_markdown(table: Table) -> str:
  """Markdown table, best **bold** and second <u>underlined</u>."""
  fmt = {BEST: "**{}**", SECOND: "<u>{}</u>"}

  def esc(text: str) -> str:
    return text.replace("|", r"\|")

  lines = [
      "Table 3: accuracy (%). Standard task: clean, six degradations and their mean. "
      "Semantic task: trained on one class, each cell clean/mean degraded accuracy.",
      "",
      "| Method | " + " | ".join(esc(c.title) for c in table.header) + " |",
      "|:--|" + "--:|" * len(table.header),
  ]
  for r, name in enumerate(table.rows):
    cells = [_cell(table, r, c, fmt, MISSING) for c in table.header]
    lines.append(f"| {esc(name)} | " + " | ".join(cells) + " |")
  note = baseline_note(table)
  if note:
    lines += ["", note]
  return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
  """One header row of flat keys; full-precision percent, empty where missing."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(("method",) + table.keys)
  for r, name in enumerate(table.rows):
    writer.writerow([name] + ["" if np.isnan(v) else repr(float(v)) for v in table.values[r]])
  for kind, per_key in table.baselines.items():
    writer.writerow([f"baseline: {kind}"] + [repr(per_key[k]) if k in per_key else ""
                                             for k in table.keys])
  return buf.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
  out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
  return out.replace("σ", r"$\sigma$").replace(MISSING, "--")


def to_latex(table: Table) -> str:
  """A booktabs tabular: a section row over the two halves, \\textbf best, \\underline second."""
  fmt = {BEST: r"\textbf{{{}}}", SECOND: r"\underline{{{}}}"}
  n_std = sum(c.section == STANDARD_SECTION for c in table.header)
  n_sem = len(table.header) - n_std
  lines = [
      r"\begin{tabular}{l" + "r" * n_std + "c" * n_sem + "}",
      r"\toprule",
      rf" & \multicolumn{{{n_std}}}{{c}}{{{STANDARD_SECTION}}}"
      rf" & \multicolumn{{{n_sem}}}{{c}}{{{SEMANTIC_SECTION}}} \\",
      rf"\cmidrule(lr){{2-{n_std + 1}}} \cmidrule(lr){{{n_std + 2}-{n_std + n_sem + 1}}}",
      "Method & " + " & ".join(latex_escape(c.title) for c in table.header) + r" \\",
      r"\midrule",
  ]
  for r, name in enumerate(table.rows):
    if r == len(table.rows) - 1:
      lines.append(r"\midrule")
    cells = [_cell(table, r, c, fmt, "--") for c in table.header]
    lines.append(latex_escape(name) + " & " + " & ".join(cells) + r" \\")
  lines.append(r"\bottomrule")
  note = baseline_note(table)
  if note:
    lines.append(rf"\multicolumn{{{len(table.header) + 1}}}{{l}}{{\footnotesize "
                 + latex_escape(note) + r"} \\")
  lines.append(r"\end{tabular}")
  return "\n".join(lines) + "\n"


def _safe_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def confusion_filename(run: dict[str, Any], eval_name: str) -> str:
  return (f"confusion_{_safe_name(run['method'])}_{_safe_name(run['task'])}_"
          f"{_safe_name(eval_name)}.png")


def plot_confusion(result: dict[str, Any], eval_name: str, path: str | os.PathLike,
                   level: int = 0) -> None:
  """Row-normalised confusion matrix of one eval at one level (clean by default) as a PNG."""
  # Figure with an Agg canvas, not pyplot: no global backend switch, no GUI, safe in threads.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  levels = result["evals"][eval_name]["levels"]
  if str(level) not in levels or "confusion" not in levels[str(level)]:
    raise ValueError(f"{result.get('_path', result['method'])}: eval {eval_name!r} has no "
                     f"confusion matrix at level {level}")
  counts = np.asarray(levels[str(level)]["confusion"], dtype=np.float64)
  num = counts.shape[0]
  classes = list(result.get("classes") or range(num))
  if counts.shape != (num, num) or len(classes) != num:
    raise ValueError(f"confusion matrix of shape {counts.shape} for {len(classes)} classes")
  support = counts.sum(axis=1, keepdims=True)
  # A class without test examples has an all-zero row rather than a division by zero.
  rates = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)

  side = max(4.0, 0.32 * num + 2.5)
  fig = Figure(figsize=(side + 1.0, side), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
  ax.set_xticks(range(num), labels=[str(c) for c in classes], rotation=90, fontsize=8)
  ax.set_yticks(range(num), labels=[str(c) for c in classes], fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if num <= 12:  # beyond that the numbers do not fit in the cells
    for i in range(num):
      for j in range(num):
        ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  name = result.get("method_display") or result["method"]
  ax.set_title(f"{name} — {result['task']}\n{eval_name}, {degradations.LEVEL_NAMES[level]}",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(os.fspath(path), format="png")


def write_confusion_plots(runs: Sequence[dict[str, Any]], out: str) -> list[str]:
  """One clean-level confusion PNG per run and eval that has one; returns the paths written."""
  paths = []
  for run in runs:
    for eval_name, ev in (run.get("evals") or {}).items():
      clean = (ev.get("levels") or {}).get("0") or {}
      if "confusion" in clean:
        path = os.path.join(out, confusion_filename(run, eval_name))
        plot_confusion(run, eval_name, path)
        paths.append(path)
  return paths


def write_summaries(table: Table, out: str, markdown: str) -> None:
  """The table's numbers as step-0 scalars `table3/<method>/<key>`, and the Markdown as text."""
  from iab_jax import writers

  writers.hide_gpus_from_tensorflow()  # also keeps TensorFlow's start-up lines off the table
  from clu import metric_writers

  names = table.methods + (AVG_METHOD,)
  scalars = {f"table3/{method}/{key}": float(table.values[r, k])
             for r, method in enumerate(names) for k, key in enumerate(table.keys)
             if not np.isnan(table.values[r, k])}
  writer = metric_writers.create_default_writer(out, asynchronous=False)
  writer.write_scalars(0, scalars)
  writer.write_texts(0, {"table3": markdown})
  writer.flush()
  writer.close()


# ---------------------------------------------------------------------------------------------
# OFA's tables: image-to-model verification (Tables 1-3 of Fei et al.) and open-set attribution
# (Tables 4-5), from the evals of type image_to_model and open_set (iab_jax/evaluators).


@dataclasses.dataclass
class GridTable:
  """A table of percentages: `values` (rows x columns, NaN where missing), each cell optionally
  with a ± std (`stds`, NaN where none)."""

  title: str
  corner: str  # the header of the row names' column
  rows: tuple[str, ...]
  columns: tuple[str, ...]
  values: np.ndarray
  stds: np.ndarray


def _evals_with(run: dict[str, Any], key: str, level: str = "0") -> list[tuple[str, dict]]:
  """(name, level entry) of the run's evals whose `level` entry holds `key`, in name order."""
  found = []
  for name, ev in sorted((run.get("evals") or {}).items()):
    entry = ((ev or {}).get("levels") or {}).get(level) or {}
    if isinstance(entry, dict) and key in entry:
      found.append((name, entry))
  return found


def _pct(value) -> float:
  return float("nan") if value is None else 100.0 * float(value)


def image_to_model_table(runs: Sequence[dict[str, Any]], level: int = 0) -> GridTable | None:
  """Tables 1/2 of OFA: rows the generators (targets), one column per run and image-to-model
  eval, cells the target's mean one-vs-one AUC (%); the last row Avg ± std over the targets.
  None when no run has such an eval."""
  columns, cells, summary = [], [], []
  for run in runs:
    found = _evals_with(run, "auc_ovo_per_target", str(level))
    for name, entry in found:
      title = run.get("method_display") or run["method"]
      title += f" ({run['task']}" + (f", {name})" if len(found) > 1 else ")")
      columns.append(title)
      cells.append({t: _pct(v) for t, v in entry["auc_ovo_per_target"].items()})
      summary.append((_pct(entry.get("auc_ovo_mean")), _pct(entry.get("auc_ovo_std"))))
  if not columns:
    return None
  targets = generators.class_order({t for c in cells for t in c})
  values = np.full((len(targets) + 1, len(columns)), np.nan)
  stds = np.full_like(values, np.nan)
  for c, per_target in enumerate(cells):
    for r, t in enumerate(targets):
      values[r, c] = per_target.get(t, np.nan)
    values[-1, c], stds[-1, c] = summary[c]
  return GridTable(title=f"Image-to-model verification ({degradations.LEVEL_NAMES[level]}): "
                   "mean one-vs-one AUC (%) per target generator; Avg ± std over the targets.",
                   corner="Generator", rows=tuple(targets) + (AVG_ROW,), columns=tuple(columns),
                   values=values, stds=stds)


def _fold(task: str) -> int | None:
  if task.startswith("openset:") and task.split(":", 1)[1].isdigit():
    return int(task.split(":", 1)[1])
  return None


def open_set_table(runs: Sequence[dict[str, Any]], level: int = 0) -> GridTable | None:
  """Tables 4/5 of OFA: one row per method, columns closed-set accuracy (mean ± std over the
  folds), AUROC and OSCR of each fold, and their mean ± std over the folds (%). None when no
  open-set run has an open_set eval."""
  found: dict[str, dict[int, dict]] = {}
  display: dict[str, str] = {}
  for run in runs:
    fold = _fold(run["task"])
    entries = _evals_with(run, "oscr", str(level))
    if fold is None or not entries:
      continue
    name = run.get("method_display") or run["method"]
    display.setdefault(name, name)
    found.setdefault(name, {})[fold] = entries[0][1]
  if not found:
    return None
  folds = sorted({f for per in found.values() for f in per})
  columns = (["Closed acc"] + [f"Fold {f} {m}" for f in folds for m in ("AUROC", "OSCR")]
             + ["Avg AUROC", "Avg OSCR"])
  values = np.full((len(found), len(columns)), np.nan)
  stds = np.full_like(values, np.nan)
  for r, per_fold in enumerate(found.values()):
    acc = [_pct(e["closed_set_accuracy"]) for e in per_fold.values()]
    values[r, 0], stds[r, 0] = np.mean(acc), np.std(acc)
    for f, entry in per_fold.items():
      c = 1 + 2 * folds.index(f)
      values[r, c], values[r, c + 1] = _pct(entry["auroc"]), _pct(entry["oscr"])
    for c, key in ((-2, "auroc"), (-1, "oscr")):
      got = [_pct(e[key]) for e in per_fold.values()]
      values[r, c], stds[r, c] = np.mean(got), np.std(got)
  return GridTable(title=f"Open-set attribution ({degradations.LEVEL_NAMES[level]}), %: "
                   "closed-set accuracy, AUROC (known vs unknown) and OSCR per fold; mean ± "
                   "std over the folds a method ran.", corner="Method",
                   rows=tuple(display[m] for m in found), columns=tuple(columns),
                   values=values, stds=stds)


def _grid_cell(table: GridTable, r: int, c: int) -> str:
  v, sd = table.values[r, c], table.stds[r, c]
  if np.isnan(v):
    return MISSING
  return f"{v:.2f}" + ("" if np.isnan(sd) else f"±{sd:.2f}")


def grid_markdown(table: GridTable) -> str:
  def esc(text: str) -> str:
    return text.replace("|", r"\|")

  lines = [table.title, "", f"| {table.corner} | " + " | ".join(map(esc, table.columns)) + " |",
           "|:--|" + "--:|" * len(table.columns)]
  for r, name in enumerate(table.rows):
    cells = [_grid_cell(table, r, c) for c in range(len(table.columns))]
    lines.append(f"| {esc(name)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def grid_csv(table: GridTable) -> str:
  """Full-precision percent; a column with stds gets a '<column> std' column after it."""
  with_std = [c for c in range(len(table.columns)) if not np.isnan(table.stds[:, c]).all()]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  header = [table.corner.lower()]
  for c, title in enumerate(table.columns):
    header += [title] + ([f"{title} std"] if c in with_std else [])
  writer.writerow(header)
  for r, name in enumerate(table.rows):
    row = [name]
    for c in range(len(table.columns)):
      for v in [table.values[r, c]] + ([table.stds[r, c]] if c in with_std else []):
        row.append("" if np.isnan(v) else repr(float(v)))
    writer.writerow(row)
  return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Detection tables (the ACM paper's Tables 1-3), from the evals of type detection
# (iab_jax/evaluators/detection.py): every run, attributor or detector, scored by 1 - P(real).

DETECTION_METRICS = {"ap": "AP", "accuracy": "ACC", "f1": "F1", "real_accuracy": "Real ACC",
                     "fake_accuracy": "Fake ACC"}
DETECTION_AVG = "Avg"
DETECTION_SOURCE_COLUMNS = ("Seen AP", "Seen ACC", "Unseen AP", "Unseen ACC", "Avg AP", "Avg ACC")


def _check_detection_metric(metric: str) -> str:
  if metric not in DETECTION_METRICS:
    raise ValueError(f"detection metric {metric!r}; known: {', '.join(DETECTION_METRICS)}")
  return DETECTION_METRICS[metric]


def _detection_rows(runs: Sequence[dict[str, Any]],
                    level: int | None = 0) -> list[tuple[str, dict[str, Any]]]:
  """(row title, eval) of every detection eval of the runs, in run order; with `level`, only
  evals that scored that level. Skipped evals ({"skipped": ...}) have no levels and drop out."""
  rows = []
  for run in runs:
    found = []
    for name, ev in sorted((run.get("evals") or {}).items()):
      levels = (ev or {}).get("levels") or {}
      if any(isinstance(e, dict) and "per_generator" in e for e in levels.values()):
        if level is None or str(level) in levels:
          found.append((name, ev))
    for name, ev in found:
      parts = [run["task"]] + [p for p in [train_fraction_label(run)] if p]
      if len(found) > 1:
        parts.append(name)
      rows.append((f"{run.get('method_display') or run['method']} ({', '.join(parts)})", ev))
  return rows


def _grid(title: str, corner: str, rows: Sequence[str], columns: Sequence[str],
          values: np.ndarray) -> GridTable:
  return GridTable(title=title, corner=corner, rows=tuple(rows), columns=tuple(columns),
                   values=values, stds=np.full_like(values, np.nan))


def detection_table(runs: Sequence[dict[str, Any]], metric: str = "ap",
                    level: int = 0) -> GridTable | None:
  """Tables 1/2 of the ACM paper: one row per run and detection eval, one column per generator
  (the registry's order) and the Avg over the run's generators, cells `metric` (%) of real
  against that generator. None when no run has a detection eval at `level`."""
  title = _check_detection_metric(metric)
  rows = _detection_rows(runs, level)
  if not rows:
    return None
  entries = [ev["levels"][str(level)] for _, ev in rows]
  gens = generators.class_order({g for e in entries for g in e["per_generator"]})
  values = np.full((len(rows), len(gens) + 1), np.nan)
  for r, entry in enumerate(entries):
    for c, g in enumerate(gens):
      if g in entry["per_generator"]:
        values[r, c] = _pct(entry["per_generator"][g][metric])
    values[r, -1] = _pct(entry["mean"][metric])
  return _grid(f"Detection ({degradations.LEVEL_NAMES[level]}): {title} (%) of real against "
               "each generator; Avg over the generators.", "Method", [t for t, _ in rows],
               gens + [DETECTION_AVG], values)


def detection_sources_table(runs: Sequence[dict[str, Any]], level: int = 0) -> GridTable | None:
  """Table 3 of the ACM paper by what each run trained on: AP and ACC (%) averaged over the
  generators it saw in training (the level's "trained_on"), over the others, and over all.
  None when no run has a detection eval at `level`."""
  rows = _detection_rows(runs, level)
  if not rows:
    return None
  values = np.full((len(rows), len(DETECTION_SOURCE_COLUMNS)), np.nan)
  for r, (_, ev) in enumerate(rows):
    entry = ev["levels"][str(level)]
    seen = set(entry.get("trained_on") or ())
    for half, pick in enumerate((lambda g: g in seen, lambda g: g not in seen)):
      got = [m for g, m in entry["per_generator"].items() if pick(g)]
      for k, metric in enumerate(("ap", "accuracy")):
        if got:
          values[r, 2 * half + k] = float(np.mean([_pct(m[metric]) for m in got]))
    values[r, 4], values[r, 5] = _pct(entry["mean"]["ap"]), _pct(entry["mean"]["accuracy"])
  return _grid(f"Detection by training source ({degradations.LEVEL_NAMES[level]}), %: AP and "
               "ACC averaged over the generators seen in training, the unseen ones, and all.",
               "Method", [t for t, _ in rows], DETECTION_SOURCE_COLUMNS, values)


def detection_levels_table(runs: Sequence[dict[str, Any]],
                           metric: str = "ap") -> GridTable | None:
  """Detection under the benchmark's degradations: one row per run and detection eval, one
  column per degradation level, cells `metric` (%) averaged over the generators. None unless a
  run scored a degraded level (the clean column alone is detection_table's Avg)."""
  title = _check_detection_metric(metric)
  rows = _detection_rows(runs, None)
  if not any(int(k) > 0 for _, ev in rows for k in ev["levels"]):
    return None
  values = np.full((len(rows), degradations.NUM_LEVELS), np.nan)
  for r, (_, ev) in enumerate(rows):
    for key, entry in ev["levels"].items():
      values[r, int(key)] = _pct(entry["mean"][metric])
  return _grid(f"Detection under degradations: {title} (%) averaged over the generators.",
               "Method", [t for t, _ in rows], degradations.LEVEL_NAMES, values)


def detection_grids(runs: Sequence[dict[str, Any]], level: int = 0) -> dict[str, GridTable]:
  """The detection tables the runs have, by output file stem."""
  grids = {"detection_ap": detection_table(runs, "ap", level),
           "detection_accuracy": detection_table(runs, "accuracy", level),
           "detection_sources": detection_sources_table(runs, level),
           "detection_levels_ap": detection_levels_table(runs, "ap"),
           "detection_levels_accuracy": detection_levels_table(runs, "accuracy")}
  return {stem: grid for stem, grid in grids.items() if grid is not None}


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m iab_jax.report",
      description="Rebuild Table 3 (standard and semantic task accuracy), and the image-to-model, "
                  "open-set and detection tables where runs have them, from run results.")
  parser.add_argument("--runs", nargs="+", required=True,
                      help="run directories, results.json files, or folders searched for them")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--latest", action="store_true",
                      help="when a method and task has several runs, keep the newest 'created'")
  parser.add_argument("--eval", default=TABLE_EVAL, help="which eval of each run the table reads")
  parser.add_argument("--no_summaries", action="store_true",
                      help="skip the TensorBoard summaries (and the TensorFlow import)")
  args = parser.parse_args(argv)

  try:
    runs = load_runs(args.runs, latest=args.latest)
    grids = {"image_to_model": image_to_model_table(runs), "open_set": open_set_table(runs),
             **detection_grids(runs)}
    try:
      table = table3(runs, eval_name=args.eval)
    except ValueError:
      if not any(grids.values()):  # nothing to write at all
        raise
      table = None  # only OFA-style runs (open-set, image-to-model) or detection runs
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  outputs, printed = [], []
  if table is not None:
    markdown = to_markdown(table)
    outputs += [("table3.md", markdown), ("table3.csv", to_csv(table)),
                ("table3.tex", to_latex(table))]
    printed.append(markdown)
  for stem, grid in grids.items():
    if grid is not None:
      outputs += [(f"{stem}.md", grid_markdown(grid)), (f"{stem}.csv", grid_csv(grid))]
      printed.append(grid_markdown(grid))
  for name, text in outputs:
    with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
      f.write(text)
  write_confusion_plots(runs, args.out)
  if table is not None and not args.no_summaries:
    write_summaries(table, args.out, markdown)
  print("\n".join(printed), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
