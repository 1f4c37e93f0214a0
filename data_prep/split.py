"""Splits a dataset into train/val/test manifests for the benchmark's protocols (DESIGN §3, §4).

  python -m data_prep.split --data DATA --protocol standard
  python -m data_prep.split --data DATA --protocol semantic --semantic 2        # task 2 = bedroom
  python -m data_prep.split --data DATA --protocol openset --fold all
  python -m data_prep.split --data DATA --protocol standard --official

Manifests go to `DATA/splits/<name>.json` (see iab_jax.data.manifests for the format).

Our own splits
--------------
standard: per class (in dataset class order) a seeded shuffle, then n_train = int(0.8 n),
  n_val = int(0.1 n), the rest test.
semantic: the chosen semantic class's records split the same way 9:1 into train/val; test holds
  every record of the other semantic classes.
openset: the generators other than real are shuffled with the seed and dealt round-robin into
  `num_folds` folds; fold k's generators are unknown. Known classes split 8:1:1 as in standard;
  each unknown class gives `test_unknown` the tail of its shuffle (by default as many records as
  its standard test share, so they are exactly the records the standard split tests on).

Each class shuffles its images in sha256 order with its own generator, seeded by
(seed, crc32(class name)). So a split depends on the images only: writing the records in another
order, or adding or removing a generator, leaves every other class's split unchanged, and a known
class's open-set split equals its standard split.

No image is in two splits: records with the same sha256 form one group, the unit that is shuffled
and counted (so `n` above counts distinct images), and a group lands in one split. A group whose
copies carry different labels cannot be tested fairly: it goes to train (standard, open-set
known classes), or is dropped (semantic test, open-set unknowns). In semantic splits a test record
whose bytes are also in train/val is dropped. All of this is counted, with examples, in the
manifest's report. Positions within a split are ascending.

Official-compatible splits (`--official`, standard and semantic)
----------------------------------------------------------------
The official PyTorch code saves no split; it recomputes one each run from its sample list. We
rebuild that list from the records and replay its random draws:
  1. order the records model by model (OFFICIAL_MODEL_ORDER, then models it does not know, by
     name), within a model semantic by semantic (SEMANTIC_ORDER, then unknown ones by name), within
     a (model, semantic) folder by Python-sorted file name;
  2. one legacy RandomState seeded with `seed` (the same stream as `np.random.seed(seed)` followed
     by `np.random.shuffle`, without touching numpy's global state);
  3. standard: labels in order of first appearance; per label shuffle its sample indices, take
     int(0.8 n) to train, int(0.1 n) to val, the rest to test;
     semantic: per label, per semantic in order of first appearance within the label, shuffle its
     indices; the training semantic gives int(0.9 n) to train and the rest to val, the others go to
     test;
  4. shuffle the train, val and test lists, in that order, and cut train to an even length by
     dropping its last element.
The lists keep that order in the manifest. Duplicates are not separated (the official code does
not); the report counts the groups that straddle splits. The result is the paper's split only if
the dataset holds exactly the files the official loader keeps (ingest applies its selection
rules); a folder over its 2000-file cap is reported as a warning.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from typing import Any, Sequence

import numpy as np

from iab_jax.data import generators as gen_lib
from iab_jax.data import manifests
from iab_jax.data import records

STANDARD_RATIOS = (0.8, 0.1, 0.1)
SEMANTIC_RATIOS = (0.9, 0.1)
SPLIT_NAMES = ("train", "val", "test", "test_unknown")
TRAIN, VAL, TEST, TEST_UNKNOWN = range(4)
NONE = -1  # a record in no split
OFFICIAL_FOLDER_CAP = 2000  # the official loader keeps at most this many files per folder
NUM_EXAMPLES = 10


class _Index:
  """The index columns a splitter needs, read once."""

  def __init__(self, ds: records.Dataset):
    self.info = ds.info
    self.classes = list(ds.classes)
    self.generator = ds.column("generator").astype(str)
    self.semantic = ds.column("semantic").astype(str)
    self.sha256 = ds.column("sha256").astype(str)
    self.key = ds.column("key").astype(str)
    self.filename = ds.column("filename").astype(str)
    self.gid, self.num_groups = _group_ids(self.sha256)

  def __len__(self):
    return len(self.sha256)

  def labels(self, classes: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    names, inverse = np.unique(self.generator, return_inverse=True)
    lookup = np.array([index.get(n, NONE) for n in names], dtype=np.int64)
    return lookup[inverse.reshape(-1)]


def _group_ids(sha256: np.ndarray) -> tuple[np.ndarray, int]:
  """Group id per record: same sha256, same id; ids ascend with the sha256."""
  if not len(sha256):
    return np.zeros(0, np.int64), 0
  groups, inverse = np.unique(sha256, return_inverse=True)
  return inverse.reshape(-1).astype(np.int64), len(groups)


def _mixed_groups(gid: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                  num_groups: int) -> np.ndarray:
  """Per group: whether its records under `mask` carry more than one label."""
  pairs = np.unique(np.stack([gid[mask], labels[mask]], axis=1), axis=0)
  return np.bincount(pairs[:, 0], minlength=num_groups) > 1


def class_rng(seed: int, name: str) -> np.random.Generator:
  """A Generator of (seed, name) only; crc32, since Python salts str hashes per process."""
  return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _cuts(n: int, ratios: Sequence[float]) -> list[int]:
  """Boundaries of n shuffled units: int(r n) for all ratios but the last, which takes the rest."""
  bounds = [0]
  for r in ratios[:-1]:
    bounds.append(bounds[-1] + int(r * n))
  return bounds + [n]


def _stratify(index: _Index, labels: np.ndarray, mask: np.ndarray, classes: Sequence[str],
              seed: int, ratios: Sequence[float], group_split: np.ndarray) -> None:
  """Deals each class's groups (of the records under `mask`) into splits 0..len(ratios)-1."""
  for c, name in enumerate(classes):
    units = np.unique(index.gid[mask & (labels == c)])  # in sha256 order, whatever the record order
    units = units[class_rng(seed, name).permutation(len(units))]
    bounds = _cuts(len(units), ratios)
    for s in range(len(ratios)):
      group_split[units[bounds[s]:bounds[s + 1]]] = s


def _check_ratios(ratios: Sequence[float], n: int) -> list[float]:
  ratios = [float(r) for r in ratios]
  if len(ratios) != n or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
    raise ValueError(f"expected {n} non-negative ratios summing to 1, got {ratios}")
  return ratios


def resolve_semantic(value: str | int, present: Sequence[str]) -> str:
  """The semantic class for a name, official folder or task number (1 cat, 2 bedroom, 3 FFHQ).

  It must have records in the data; the error lists the semantic classes that do.
  """
  present = sorted(set(present), key=_semantic_rank)
  text = str(value).strip()
  if text.isdigit():
    name = gen_lib.SEMANTIC_TASKS.get(int(text))
    if name is None:
      raise ValueError(f"semantic task {text} does not exist: tasks are "
                       + ", ".join(f"{k} ({v})" for k, v in gen_lib.SEMANTIC_TASKS.items()))
  else:
    name = gen_lib.semantic_name(text) or text
  if name not in present:
    raise ValueError(f"semantic class {value!r} has no records in this dataset; "
                     f"present: {', '.join(present) or 'none'}")
  return name


def _semantic_rank(name: str):
  order = gen_lib.SEMANTIC_ORDER
  return (0, order.index(name), "") if name in order else (1, 0, name)


def _model_rank(name: str):
  order = gen_lib.OFFICIAL_MODEL_ORDER
  return (0, order.index(name), "") if name in order else (1, 0, name)


def _named_splits(record_split: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
  return {name: np.flatnonzero(record_split == s) for s, name in enumerate(names)}


def _record_split_of(splits: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, list[str]]:
  record_split = np.full(n, NONE, np.int64)
  for s, positions in enumerate(splits.values()):
    record_split[positions] = s
  return record_split, list(splits)


# ----------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------


def _counts(values: np.ndarray, order: Sequence[str]) -> dict[str, int]:
  names, counts = np.unique(values, return_counts=True)
  found = dict(zip(names.tolist(), counts.tolist()))
  ordered = [n for n in order if n in found] + sorted(set(found) - set(order))
  return {n: int(found[n]) for n in ordered}


def _group_examples(index: _Index, groups: np.ndarray, record_split: np.ndarray,
                    split_names: Sequence[str]) -> list[dict[str, Any]]:
  groups = groups[:NUM_EXAMPLES]
  members = np.flatnonzero(np.isin(index.gid, groups))
  examples = []
  for g in groups:
    pos = members[index.gid[members] == g]
    examples.append({
        "sha256": index.sha256[pos[0]],
        "keys": index.key[pos].tolist(),
        "generators": index.generator[pos].tolist(),
        "splits": [split_names[s] if s >= 0 else None for s in record_split[pos]],
    })
  return examples


def _report(index: _Index, splits: dict[str, np.ndarray], labels: np.ndarray,
            dropped: dict[str, np.ndarray] | None = None, warnings: list[str] | None = None,
            ) -> dict[str, Any]:
  """Sizes per split, class and semantic; duplicates with examples; dropped records; warnings."""
  record_split, split_names = _record_split_of(splits, len(index))
  warnings = list(warnings or [])
  report: dict[str, Any] = {
      "sizes": {name: len(p) for name, p in splits.items()},
      "per_class": {name: _counts(index.generator[p], index.classes) for name, p in splits.items()},
      "per_semantic": {name: _counts(index.semantic[p], gen_lib.SEMANTIC_ORDER)
                       for name, p in splits.items()},
  }
  sizes = np.bincount(index.gid, minlength=index.num_groups)
  dup = np.flatnonzero(sizes > 1)
  valid = labels >= 0
  mixed = np.flatnonzero(_mixed_groups(index.gid, labels, valid, index.num_groups))
  # Groups whose records sit in more than one split (only official splits allow that).
  in_split = record_split >= 0
  pairs = np.unique(np.stack([index.gid[in_split], record_split[in_split]], axis=1), axis=0)
  straddling = np.flatnonzero(np.bincount(pairs[:, 0], minlength=index.num_groups) > 1)
  report["duplicates"] = {
      "groups": int(len(dup)),
      "extra_copies": int(sizes[dup].sum() - len(dup)),
      "cross_label_groups": int(len(mixed)),
      "groups_across_splits": int(len(straddling)),
      "examples": _group_examples(index, dup, record_split, split_names),
      "cross_label_examples": _group_examples(index, mixed, record_split, split_names),
  }
  if len(dup):
    warnings.append(f"{len(dup)} groups of byte-identical images "
                    f"({report['duplicates']['extra_copies']} extra copies), "
                    f"{len(mixed)} of them under different labels")
  if len(straddling):
    warnings.append(f"{len(straddling)} groups of identical images lie in more than one split")
  if (~valid).any():
    warnings.append(f"{int((~valid).sum())} records of generators outside the dataset classes "
                    "are in no split")
  report["dropped"] = {reason: {"count": int(len(p)), "keys": index.key[p[:NUM_EXAMPLES]].tolist()}
                       for reason, p in (dropped or {}).items()}
  for reason, p in (dropped or {}).items():
    if len(p):
      warnings.append(f"dropped {len(p)} records: {reason}")
  report["warnings"] = warnings
  return report


def _manifest(index: _Index, name: str, protocol: str, options: dict[str, Any],
              classes: Sequence[str], splits: dict[str, np.ndarray], report: dict[str, Any]):
  return manifests.make_manifest(name=name, protocol=protocol, options=options,
                                 dataset_info=index.info, classes=classes,
                                 splits={k: v.tolist() for k, v in splits.items()}, report=report)


# ----------------------------------------------------------------------------------------------
# Our own splits.
# ----------------------------------------------------------------------------------------------


def standard_split(ds: records.Dataset, *, seed: int = 42,
                   ratios: Sequence[float] = STANDARD_RATIOS, official: bool = False
                   ) -> dict[str, Any]:
  """Stratified train/val/test split by label (8:1:1), disjoint by sha256; a manifest dict."""
  if official:
    return official_standard_split(ds, seed=seed, ratios=ratios)
  ratios = _check_ratios(ratios, 3)
  index = _Index(ds)
  labels = index.labels(index.classes)
  valid = labels >= 0
  mixed = _mixed_groups(index.gid, labels, valid, index.num_groups)
  group_split = np.full(index.num_groups, NONE, np.int64)
  _stratify(index, labels, valid & ~mixed[index.gid], index.classes, seed, ratios, group_split)
  group_split[mixed] = TRAIN  # same bytes, two labels: never a test item
  record_split = np.where(valid, group_split[index.gid], NONE)
  splits = _named_splits(record_split, SPLIT_NAMES[:3])
  options = {"seed": seed, "ratios": ratios, "official": False, "disjoint_by": "sha256"}
  return _manifest(index, manifests.manifest_name("standard"), "standard", options, index.classes,
                   splits, _report(index, splits, labels))


def semantic_split(ds: records.Dataset, semantic: str | int, *, seed: int = 42,
                   ratios: Sequence[float] = SEMANTIC_RATIOS, official: bool = False
                   ) -> dict[str, Any]:
  """Train/val (9:1 by label) from one semantic class, test = every other semantic class."""
  if official:
    return official_semantic_split(ds, semantic, seed=seed, ratios=ratios)
  ratios = _check_ratios(ratios, 2)
  index = _Index(ds)
  chosen = resolve_semantic(semantic, index.semantic)
  labels = index.labels(index.classes)
  valid = labels >= 0
  in_sem = valid & (index.semantic == chosen)
  mixed = _mixed_groups(index.gid, labels, in_sem, index.num_groups)
  group_split = np.full(index.num_groups, NONE, np.int64)
  _stratify(index, labels, in_sem & ~mixed[index.gid], index.classes, seed, ratios, group_split)
  group_split[mixed] = TRAIN

  record_split = np.full(len(index), NONE, np.int64)
  record_split[in_sem] = group_split[index.gid[in_sem]]
  candidates = valid & ~in_sem
  seen = candidates & (group_split[index.gid] >= 0)
  mixed_test = _mixed_groups(index.gid, labels, candidates, index.num_groups)
  ambiguous = candidates & ~seen & mixed_test[index.gid]
  record_split[candidates & ~seen & ~ambiguous] = TEST
  splits = _named_splits(record_split, SPLIT_NAMES[:3])

  train_classes = set(index.generator[splits["train"]].tolist())
  missing = [c for c in index.classes if c not in train_classes]
  warnings = []
  if missing:
    warnings.append(f"classes with no training data in semantic {chosen!r}: {', '.join(missing)}")
  report = _report(index, splits, labels, warnings=warnings, dropped={
      "test image identical to a train/val image": np.flatnonzero(seen),
      "test image present under several labels": np.flatnonzero(ambiguous)})
  report["classes_without_training_data"] = missing
  options = {"seed": seed, "ratios": ratios, "semantic": chosen, "official": False,
             "disjoint_by": "sha256",
             "test_semantics": sorted(set(index.semantic[candidates].tolist()), key=_semantic_rank)}
  return _manifest(index, manifests.manifest_name("semantic", semantic=chosen), "semantic", options,
                   index.classes, splits, report)


def is_real(name: str) -> bool:
  gen = gen_lib.lookup(name)
  return gen.is_real if gen else name == "real"


def openset_folds(classes: Sequence[str], num_folds: int = 5, seed: int = 42) -> list[list[str]]:
  """The generators (all classes but real) shuffled with `seed` and dealt round-robin into folds."""
  names = [c for c in classes if not is_real(c)]
  if len(names) < num_folds:
    raise ValueError(f"open-set needs at least one generator per fold: {len(names)} generators "
                     f"({', '.join(names)}) for {num_folds} folds")
  order = np.random.default_rng(seed).permutation(len(names))
  return [[names[i] for i in sorted(order[f::num_folds])] for f in range(num_folds)]


def openset_split(ds: records.Dataset, fold: int, *, num_folds: int = 5, seed: int = 42,
                  ratios: Sequence[float] = STANDARD_RATIOS, unknown_fraction: float | None = None
                  ) -> dict[str, Any]:
  """Known generators (+ real) split 8:1:1; fold `fold`'s generators give `test_unknown`.

  `unknown_fraction=None` takes from each unknown class as many records as its standard test
  share, the very records the standard split tests on; a float takes round(f n) records.
  """
  ratios = _check_ratios(ratios, 3)
  if not 0 <= fold < num_folds:
    raise ValueError(f"fold {fold} is outside 0..{num_folds - 1}")
  if unknown_fraction is not None and not 0 <= unknown_fraction <= 1:
    raise ValueError(f"unknown_fraction {unknown_fraction} is outside [0, 1]")
  index = _Index(ds)
  folds = openset_folds(index.classes, num_folds, seed)
  unknown = folds[fold]
  known = [c for c in index.classes if c not in unknown]
  labels = index.labels(index.classes)
  valid = labels >= 0
  is_unknown = np.isin(index.generator, unknown)
  known_mask, unknown_mask = valid & ~is_unknown, valid & is_unknown
  mixed = _mixed_groups(index.gid, labels, valid, index.num_groups)
  group_split = np.full(index.num_groups, NONE, np.int64)
  _stratify(index, labels, known_mask & ~mixed[index.gid], index.classes, seed, ratios, group_split)
  for c, name in enumerate(index.classes):
    if name not in unknown:
      continue
    units = np.unique(index.gid[unknown_mask & ~mixed[index.gid] & (labels == c)])
    units = units[class_rng(seed, name).permutation(len(units))]
    n = len(units)
    if unknown_fraction is None:
      take = n - _cuts(n, ratios)[2]
    else:
      take = min(n, int(round(unknown_fraction * n)))
    group_split[units[n - take:]] = TEST_UNKNOWN
  group_split[mixed] = TRAIN  # their known copies train; their unknown copies are dropped

  record_split = np.full(len(index), NONE, np.int64)
  record_split[known_mask] = group_split[index.gid[known_mask]]
  record_split[unknown_mask & (group_split[index.gid] == TEST_UNKNOWN)] = TEST_UNKNOWN
  splits = _named_splits(record_split, SPLIT_NAMES)
  report = _report(index, splits, labels, dropped={
      "unknown-class image identical to an image of another class":
          np.flatnonzero(unknown_mask & mixed[index.gid])})
  options = {"seed": seed, "ratios": ratios, "fold": fold, "num_folds": num_folds,
             "unknown_fraction": unknown_fraction, "unknown": unknown, "folds": folds,
             "official": False, "disjoint_by": "sha256"}
  return _manifest(index, manifests.manifest_name("openset", fold=fold), "openset", options, known,
                   splits, report)


# ----------------------------------------------------------------------------------------------
# Official-compatible splits.
# ----------------------------------------------------------------------------------------------


def _official_order(index: _Index) -> np.ndarray:
  """Record positions in the order of the official code's sample list."""
  models = {g: _model_rank(g) for g in set(index.generator.tolist())}
  semantics = {s: _semantic_rank(s) for s in set(index.semantic.tolist())}
  keys = [(models[g], semantics[s], f or k.rsplit("/", 1)[-1], i) for i, (g, s, f, k) in enumerate(
      zip(index.generator.tolist(), index.semantic.tolist(), index.filename.tolist(),
          index.key.tolist()))]
  return np.array([k[-1] for k in sorted(keys)], dtype=np.int64)


def _first_appearance(values: np.ndarray) -> list:
  _, first = np.unique(values, return_index=True)
  return values[np.sort(first)].tolist()


def _official_finish(rng: np.random.RandomState, order: np.ndarray, parts: list[list[np.ndarray]]
                     ) -> dict[str, np.ndarray]:
  train, val, test = (np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts)
  for part in (train, val, test):
    rng.shuffle(part)
  if len(train) % 2:
    train = train[:-1]
  return {"train": order[train], "val": order[val], "test": order[test]}


def _official_warnings(index: _Index) -> list[str]:
  warnings = []
  folders, counts = np.unique(np.char.add(np.char.add(index.generator, "/"), index.semantic),
                              return_counts=True)
  over = [f"{f} ({c})" for f, c in zip(folders, counts) if c > OFFICIAL_FOLDER_CAP]
  if over:
    warnings.append(f"the official loader keeps at most {OFFICIAL_FOLDER_CAP} files per folder, "
                    f"but these hold more, so this is not the paper's split: {', '.join(over)}")
  return warnings


def _official_index(ds):
  index = _Index(ds)
  labels = index.labels(index.classes)
  order = _official_order(index)
  order = order[labels[order] >= 0]
  return index, labels, order


def official_standard_split(ds: records.Dataset, *, seed: int = 42,
                            ratios: Sequence[float] = STANDARD_RATIOS) -> dict[str, Any]:
  """The standard split exactly as the official code computes it (see the module docstring)."""
  ratios = _check_ratios(ratios, 3)
  index, labels, order = _official_index(ds)
  sample_labels = labels[order]
  rng = np.random.RandomState(seed)
  parts = [[], [], []]
  for label in _first_appearance(sample_labels):
    samples = np.flatnonzero(sample_labels == label)
    rng.shuffle(samples)
    bounds = _cuts(len(samples), ratios)
    for s in range(3):
      parts[s].append(samples[bounds[s]:bounds[s + 1]])
  splits = _official_finish(rng, order, parts)
  report = _report(index, splits, labels, warnings=_official_warnings(index))
  options = {"seed": seed, "ratios": ratios, "official": True, "disjoint_by": None}
  return _manifest(index, manifests.manifest_name("standard", official=True), "standard", options,
                   index.classes, splits, report)


def official_semantic_split(ds: records.Dataset, semantic: str | int, *, seed: int = 42,
                            ratios: Sequence[float] = SEMANTIC_RATIOS) -> dict[str, Any]:
  """The semantic-task split exactly as the official code computes it (see the module docstring)."""
  ratios = _check_ratios(ratios, 2)
  index, labels, order = _official_index(ds)
  chosen = resolve_semantic(semantic, index.semantic[order])
  sample_labels, sample_semantics = labels[order], index.semantic[order]
  rng = np.random.RandomState(seed)
  parts = [[], [], []]
  for label in _first_appearance(sample_labels):
    of_label = np.flatnonzero(sample_labels == label)
    for sem in _first_appearance(sample_semantics[of_label]):
      samples = of_label[sample_semantics[of_label] == sem]
      rng.shuffle(samples)
      if sem == chosen:
        n_train = int(ratios[0] * len(samples))
        parts[TRAIN].append(samples[:n_train])
        parts[VAL].append(samples[n_train:])
      else:
        parts[TEST].append(samples)
  splits = _official_finish(rng, order, parts)
  report = _report(index, splits, labels, warnings=_official_warnings(index))
  options = {"seed": seed, "ratios": ratios, "semantic": chosen, "official": True,
             "disjoint_by": None}
  return _manifest(index, manifests.manifest_name("semantic", semantic=chosen, official=True),
                   "semantic", options, index.classes, splits, report)


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------


def summary(manifest: dict[str, Any]) -> str:
  """A readable table of a manifest: records per class and split, duplicates, warnings."""
  report = manifest["report"]
  split_names = list(manifest["splits"])
  rows = []
  for split in split_names:
    for name in report["per_class"][split]:
      if name not in rows:
        rows.append(name)
  width = max([len(r) for r in rows] + [5])
  cols = [max(len(s), 7) for s in split_names]
  opts = manifest["options"]
  extra = "".join(f", {k} {opts[k]}" for k in ("semantic", "fold") if opts.get(k) is not None)
  lines = [f"{manifest['name']}: protocol {manifest['protocol']}{extra}, seed {opts['seed']}"
           f"{', official' if opts.get('official') else ''}, {len(manifest['classes'])} classes",
           "class".ljust(width) + "".join(f" {s:>{w}}" for s, w in zip(split_names, cols))]
  for name in rows:
    counts = [report["per_class"][s].get(name, 0) for s in split_names]
    lines.append(name.ljust(width) + "".join(f" {c:>{w}}" for c, w in zip(counts, cols)))
  lines.append("total".ljust(width) + "".join(f" {report['sizes'][s]:>{w}}"
                                              for s, w in zip(split_names, cols)))
  dup = report["duplicates"]
  if dup["groups"]:
    lines.append(f"duplicates: {dup['groups']} groups of identical images, {dup['extra_copies']} "
                 f"extra copies, {dup['cross_label_groups']} under different labels, "
                 f"{dup['groups_across_splits']} across splits; e.g.")
    for ex in dup["examples"][:5]:
      lines.append(f"  {ex['sha256'][:12]}  " + ", ".join(
          f"{k} [{s or '-'}]" for k, s in zip(ex["keys"], ex["splits"])))
  for warning in report["warnings"]:
    lines.append(f"warning: {warning}")
  return "\n".join(lines)


def _parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m data_prep.split",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="dataset directory (holds dataset.json)")
  parser.add_argument("--protocol", required=True, choices=("standard", "semantic", "openset"))
  parser.add_argument("--semantic", help="semantic protocol: a class name (cat, Scene/bedroom, "
                      "...) or task number 1 (cat), 2 (bedroom), 3 (FFHQ)")
  parser.add_argument("--fold", default="0", help="open-set fold, 0..num_folds-1, or 'all'")
  parser.add_argument("--num_folds", type=int, default=5)
  parser.add_argument("--seed", type=int, default=42)
  parser.add_argument("--ratios", help="comma-separated split ratios (default 0.8,0.1,0.1; "
                      "semantic 0.9,0.1)")
  parser.add_argument("--unknown_fraction", type=float, default=None,
                      help="open-set: share of each unknown class in test_unknown (default: its "
                      "standard test share, 10%%)")
  parser.add_argument("--official", action="store_true",
                      help="reproduce the official code's split (standard and semantic)")
  parser.add_argument("--out", help="manifest path (default DATA/splits/<name>.json)")
  parser.add_argument("--quiet", action="store_true", help="print only the written paths")
  args = parser.parse_args(argv)
  if args.protocol == "semantic" and not args.semantic:
    parser.error("--protocol semantic needs --semantic")
  if args.official and args.protocol == "openset":
    parser.error("--official exists for standard and semantic only (the official code has no "
                 "open-set split)")
  if args.fold != "all" and not args.fold.isdigit():
    parser.error(f"--fold must be a number or 'all', not {args.fold!r}")
  if args.fold == "all" and args.out:
    parser.error("--out names one file; --fold all writes one manifest per fold")
  return args


def main(argv: Sequence[str] | None = None) -> list[str]:
  args = _parse_args(argv)
  ds = records.Dataset(args.data)
  ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else None
  kw: dict[str, Any] = {"seed": args.seed}
  if ratios:
    kw["ratios"] = ratios
  if args.protocol == "standard":
    made = [standard_split(ds, official=args.official, **kw)]
  elif args.protocol == "semantic":
    made = [semantic_split(ds, args.semantic, official=args.official, **kw)]
  else:
    folds = range(args.num_folds) if args.fold == "all" else [int(args.fold)]
    made = [openset_split(ds, k, num_folds=args.num_folds, unknown_fraction=args.unknown_fraction,
                          **kw) for k in folds]
  paths = []
  for manifest in made:
    path = args.out or os.path.join(args.data, manifests.SPLITS_DIR, manifest["name"] + ".json")
    manifests.save_manifest(manifest, path)
    paths.append(path)
    if not args.quiet:
      print(summary(manifest))
    print(f"wrote {path}")
  return paths


if __name__ == "__main__":
  main(sys.argv[1:])
