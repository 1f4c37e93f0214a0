"""Splits a dataset into train/val/test manifests for the benchmark's protocols (DESIGN §3, §4).

  python -m data_prep.split --data DATA --protocol standard
  python -m data_prep.split --data DATA --protocol semantic --semantic 2        # task 2 = bedroom
  python -m data_prep.split --data DATA --protocol openset --fold all
  python -m data_prep.split --data DATA --protocol standard --official
  python -m data_prep.split --data DATA --protocol group --test_groups 10 --val_groups 10

Manifests go to `DATA/splits/<name>.json` (see iab_jax.data.manifests for the format). A user
error (no such directory, no dataset, a class or group the data does not hold) ends the command
with one `error: ...` line and exit status 2.

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

group: the semantic protocol's point (test on content never seen in training) for groups of the
  user's own data, e.g. prompts (ingest --group_from). Whole groups go to one side. `--test_groups`
  and `--val_groups` each name groups (a comma-separated list) or give a count N of groups to draw
  with the seed (a plain integer; write "7," to name a group called 7); --val_groups defaults to
  as many groups as test. Labels are stratified as far as whole groups allow, by this rule: the
  groups not named are dealt at random with the seed (a seeded shuffle gives test, then val, its
  number of groups; train takes the rest), then improved by exchanges: each side has a target,
  its share of the groups times each class's total, and the distance of a side is the sum over
  classes of |target - records it holds|, each divided by the class's total (so a small class
  counts as much as a large one). In passes over the drawn groups of test and val, each is
  exchanged with the drawn group of another side (among up to 256 of them, chosen with the seed)
  that lowers the summed distance of the two sides most, if any does; the passes stop when none
  does (at most 20). Where groups are alike no exchange helps and the draw stays random; where a
  class lives in few groups, exchanges bring it to every side. Records without a group are in no
  split. The report adds records per group and side, and warns when a class is missing from a
  side.

Each class shuffles its images in sha256 order with its own generator, seeded by
(seed, crc32(class name)). So a split depends on the images only: writing the records in another
order, or adding or removing a generator, leaves every other class's split unchanged, and a known
class's open-set split equals its standard split.

No image is in two splits: records with the same sha256 form one group, the unit that is shuffled
and counted (so `n` above counts distinct images), and a group lands in one split. A group whose
copies carry different labels cannot be tested fairly: it goes to train (standard, open-set
known classes), or is dropped (semantic test, open-set unknowns). In semantic splits a test record
whose bytes are also in train/val is dropped. In group splits a user's group is the unit, so two
groups can share an image: a val record whose bytes are also in train, and a test record whose
bytes are also in train or val, are dropped, as is a val or test record whose bytes carry several
labels.
All of this is counted, with examples, in the manifest's report. Positions within a split are
ascending.

Official-compatible splits (`--official`, standard and semantic)
----------------------------------------------------------------
The official PyTorch code saves no split; it recomputes one each run from its sample list. We
rebuild that list from the records and replay its random draws:
  0. keep what its loader would load: it opens only its 23 model folders (OFFICIAL_MODEL_ORDER,
     exact names) and, in each, its 10 semantic folders (AnimalFace/cat, ..., Scene/classroom);
     it keeps a file by the selection rules (data_prep.sources.official_rule) and at most 2000
     kept files per folder, the first in sorted order. A record's folder is the one ingest
     recorded (extra.model_folder and extra.semantic_folder: an alias folder such as sd-v2.1,
     which we read as SD2_1, or a generator the code does not know, e.g. FLUX2_KLEIN, stays
     out); a dataset written without them falls back to the generator and semantic names. The
     records left out, and why, are counted in the report and printed. The manifest's classes are
     the dataset's classes that keep records;
  1. order the records model by model (OFFICIAL_MODEL_ORDER), within a model semantic by
     semantic (SEMANTIC_ORDER), within a (model, semantic) folder by Python-sorted file name;
  2. one legacy RandomState seeded with `seed` (the same stream as `np.random.seed(seed)` followed
     by `np.random.shuffle`, without touching numpy's global state);
  3. standard: labels in order of first appearance; per label shuffle its sample indices, take
     int(0.8 n) to train, int(0.1 n) to val, the rest to test;
     semantic: per label, per semantic in order of first appearance within the label, shuffle its
     indices; the training semantic gives int(0.8 n) to train and the rest to val, the others go to
     test. 0.8 is the code's: `get_dataloader`'s train_ratio defaults to 0.8 and train.py passes
     none, although the paper says 9:1 (our own semantic split uses 9:1; iab_jax before this
     version used 0.9 here too, which was not the official split);
  4. shuffle the train, val and test lists, in that order, and cut train to an even length by
     dropping its last element.
The lists keep that order in the manifest. Duplicates are not separated (the official code does
not); the report counts the groups that straddle splits. Files that ingest skipped as unreadable
are missing from the list, unlike in the official code (which would fail on them): the report
warns when the ingest report lists any.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import zlib
from typing import Any, Sequence

import numpy as np

from data_prep import _cli, sources
from iab_jax.data import generators as gen_lib
from iab_jax.data import manifests
from iab_jax.data import records

STANDARD_RATIOS = (0.8, 0.1, 0.1)
SEMANTIC_RATIOS = (0.9, 0.1)
OFFICIAL_SEMANTIC_RATIOS = (0.8, 0.2)  # the official code's train_ratio default (see above)
SPLIT_NAMES = ("train", "val", "test", "test_unknown")
TRAIN, VAL, TEST, TEST_UNKNOWN = range(4)
NONE = -1  # a record in no split
NUM_EXAMPLES = 10


class SplitError(ValueError):
  """A request the data cannot satisfy: a user error, reported by the CLI as one line.

  `flag` names the command-line flag it concerns ("--semantic 2"), when one does.
  """

  def __init__(self, message: str, flag: str = ""):
    super().__init__(message)
    self.flag = flag


class _Index:
  """The index columns a splitter needs, read once."""

  def __init__(self, ds: records.Dataset):
    self._ds = ds
    self.root = ds.root
    self.info = ds.info
    self.classes = list(ds.classes)
    self.generator = ds.column("generator").astype(str)
    self.semantic = ds.column("semantic").astype(str)
    self.sha256 = ds.column("sha256").astype(str)
    self.key = ds.column("key").astype(str)
    self.filename = ds.column("filename").astype(str)
    self.gid, self.num_groups = _group_ids(self.sha256)

  @functools.cached_property
  def group(self) -> np.ndarray:
    """Each record's group ("" for none; every record of a dataset written before groups)."""
    return self._ds.column("group").astype(str)

  @functools.cached_property
  def origin(self) -> tuple[np.ndarray, np.ndarray]:
    """(model folder, semantic folder) of each record as its source named them (see
    data_prep.sources); a record without them gets its generator and its semantic class's
    official folder ("" for a semantic class the official code does not know)."""
    models, folders = self.generator.astype(object), np.empty(len(self), dtype=object)
    for i, (extra, sem) in enumerate(zip(self._ds.column("extra"), self.semantic)):
      found = json.loads(extra) if extra and "_folder" in extra else {}
      if found.get("model_folder"):
        models[i] = found["model_folder"]
      default = gen_lib.SEMANTICS[sem][0] if sem in gen_lib.SEMANTICS else ""
      folders[i] = found.get("semantic_folder", default)
    return models.astype(str), folders.astype(str)

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
    raise SplitError(f"expected {n} non-negative ratios summing to 1, got {ratios}", "--ratios")
  return ratios


def resolve_semantic(value: str | int, present: Sequence[str]) -> str:
  """The semantic class for a name, official folder or task number (1 cat, 2 bedroom, 3 FFHQ).

  It must have records in the data; the error names the class and lists the ones that do.
  """
  present = sorted(set(present), key=_semantic_rank)
  text = str(value).strip()
  flag = f"--semantic {text}"
  if text.isdigit():
    name = gen_lib.SEMANTIC_TASKS.get(int(text))
    if name is None:
      raise SplitError(f"semantic task {text} does not exist: tasks are "
                       + ", ".join(f"{k} ({v})" for k, v in gen_lib.SEMANTIC_TASKS.items()), flag)
    shown = f"{name} (task {text})"
  else:
    name = gen_lib.semantic_name(text) or text
    shown = name if name == text else f"{name} ({text})"
  if name not in present:
    raise SplitError(f"semantic class {shown} has no records in this dataset; "
                     f"present: {', '.join(present) or 'none'}", flag)
  return name


def _semantic_rank(name: str):
  order = gen_lib.SEMANTIC_ORDER
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
                   ratios: Sequence[float] | None = None, official: bool = False
                   ) -> dict[str, Any]:
  """Train/val (9:1 by label) from one semantic class, test = every other semantic class.

  `ratios` defaults to 9:1 (the paper), or with `official` to the official code's 8:2.
  """
  if official:
    return official_semantic_split(ds, semantic, seed=seed,
                                   ratios=OFFICIAL_SEMANTIC_RATIOS if ratios is None else ratios)
  ratios = _check_ratios(SEMANTIC_RATIOS if ratios is None else ratios, 2)
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
    raise SplitError(f"open-set needs at least one generator per fold: {len(names)} generators "
                     f"({', '.join(names)}) for {num_folds} folds", f"--num_folds {num_folds}")
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
    raise SplitError(f"fold {fold} is outside 0..{num_folds - 1}", f"--fold {fold}")
  if unknown_fraction is not None and not 0 <= unknown_fraction <= 1:
    raise SplitError(f"unknown_fraction {unknown_fraction} is outside [0, 1]",
                     f"--unknown_fraction {unknown_fraction}")
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
# Group-disjoint split.
# ----------------------------------------------------------------------------------------------

GROUP_SIDES = ("train", "val", "test")
GROUP_RULE = ("whole groups per side; a seeded random draw, then exchanges of drawn groups "
              "between sides while one brings the sides' per-class counts closer (L1, relative to "
              "each class's total) to their targets (each side's share of the groups times each "
              "class's total)")
MAX_SWAP_PASSES = 20
SWAP_CANDIDATES = 256  # groups of the other sides weighed per exchange, drawn with the seed


def parse_group_request(value: int | str | Sequence[str] | None) -> int | list[str] | None:
  """A --test_groups/--val_groups value: a count (int, or a string of digits) or group names
  (a list, or a comma-separated string; "7," names the group "7")."""
  if value is None or isinstance(value, int):
    return value
  if isinstance(value, str):
    text = value.strip()
    if text.isdigit():
      return int(text)
    return [v.strip() for v in text.split(",") if v.strip()]
  return [str(v) for v in value]


def _deal_groups(counts: np.ndarray, fixed: dict[int, int], slots: list[int],
                 rng: np.random.Generator) -> np.ndarray:
  """Side of each group (rows of `counts`, per-class record counts) by the rule above.

  `fixed` maps groups named on the command line to their side; `slots[s]` is the number of groups
  side s gets in all (fixed ones included). The drawn groups are dealt from a seeded shuffle,
  then improved by exchanges between sides (see the module docstring).
  """
  side = np.full(len(counts), NONE, np.int64)
  for g, s in fixed.items():
    side[g] = s
  drawn = rng.permutation(np.flatnonzero(side == NONE))
  start = 0
  for s in (TEST, VAL, TRAIN):
    n = slots[s] - sum(1 for v in fixed.values() if v == s)
    side[drawn[start:start + n]] = s
    start += n
  totals = np.maximum(counts.sum(axis=0), 1).astype(np.float64)
  target = (np.array(slots, np.float64) / len(counts))[:, None] * counts.sum(axis=0)
  have = np.stack([counts[side == s].sum(axis=0) for s in range(3)]).astype(np.float64)

  def distance(s, held):
    return (np.abs(target[s] - held) / totals).sum(axis=-1)

  for _ in range(MAX_SWAP_PASSES):
    improved = False
    # Every useful exchange involves val or test: visit their drawn groups in the drawn order.
    for a in drawn[side[drawn] != TRAIN]:
      s = side[a]
      others = drawn[side[drawn] != s]
      if not len(others):
        continue
      if len(others) > SWAP_CANDIDATES:
        others = others[rng.choice(len(others), SWAP_CANDIDATES, replace=False)]
      t = side[others]
      delta = counts[others] - counts[a]  # what side s gains and side t loses by the exchange
      gain = (distance(s, have[s]) + distance(t, have[t])
              - distance(s, have[s] + delta) - distance(t, have[t] - delta))
      best = int(np.argmax(gain))
      if gain[best] > 1e-9:
        b = others[best]
        have[s] += delta[best]
        have[side[b]] -= delta[best]
        side[a], side[b] = side[b], s
        improved = True
    if not improved:
      break
  return side


def group_split(ds: records.Dataset, test_groups: int | str | Sequence[str],
                val_groups: int | str | Sequence[str] | None = None, *, seed: int = 42
                ) -> dict[str, Any]:
  """Whole groups (record field `group`, from ingest --group_from) to train, val or test.

  `test_groups` and `val_groups` are counts of groups to draw with `seed` or lists of group
  names (see parse_group_request); `val_groups=None` draws as many groups as test has. See the
  module docstring for the rule that balances classes and for duplicates.
  """
  index = _Index(ds)
  labels = index.labels(index.classes)
  valid = labels >= 0
  grouped = valid & (index.group != "")
  if not grouped.any():
    raise SplitError(f"{index.root} has no groups: every record's group is empty; ingest with "
                     "`--layout folders --group_from dirname|regex:PATTERN` to give records one",
                     "--protocol group")
  names, group_of = np.unique(index.group[grouped], return_inverse=True)
  names = names.tolist()
  gidx = np.full(len(index), NONE, np.int64)
  gidx[grouped] = group_of.reshape(-1)
  counts = np.zeros((len(names), len(index.classes)), np.int64)
  np.add.at(counts, (gidx[grouped], labels[grouped]), 1)

  requests = {TEST: parse_group_request(test_groups), VAL: parse_group_request(val_groups)}
  if requests[VAL] is None:
    test = requests[TEST]
    requests[VAL] = test if isinstance(test, int) else len(test)
  flags = {TEST: f"--test_groups {test_groups}", VAL: f"--val_groups {val_groups}"}
  position = {name: g for g, name in enumerate(names)}
  fixed: dict[int, int] = {}
  notes = []
  for s in (TEST, VAL):
    request = requests[s]
    if isinstance(request, int):
      if str(request) in position:
        notes.append(f"{flags[s]} was read as a count of groups, although a group is named "
                     f"{request!r}; write '{request},' to name it")
      continue
    unknown = [n for n in request if n not in position]
    if unknown:
      raise SplitError(f"no group named {', '.join(map(repr, unknown[:5]))} in this dataset "
                       f"({len(names)} groups, e.g. {', '.join(names[:5])})", flags[s])
    for n in request:
      if fixed.get(position[n], s) != s:
        raise SplitError(f"group {n!r} is named for both test and val", flags[s])
      fixed[position[n]] = s
  slots = [0, 0, 0]
  for s in (TEST, VAL):
    request = requests[s]
    slots[s] = request if isinstance(request, int) else len(set(request))
  if slots[TEST] < 1:
    raise SplitError("the test side needs at least one group", flags[TEST])
  slots[TRAIN] = len(names) - slots[TEST] - slots[VAL]
  if slots[TRAIN] < 1:
    raise SplitError(f"{slots[TEST]} test and {slots[VAL]} val groups leave none of the "
                     f"{len(names)} groups to train on", flags[TEST])
  side_of_group = _deal_groups(counts, fixed, slots, np.random.default_rng(
      [seed, zlib.crc32(b"group")]))

  record_split = np.full(len(index), NONE, np.int64)
  record_split[grouped] = side_of_group[gidx[grouped]]
  # Identical bytes: the earliest side (train, then val, then test) keeps them; copies of an
  # image that carries several labels are not scored.
  in_split = record_split >= 0
  first_side = np.full(index.num_groups, len(GROUP_SIDES), np.int64)
  np.minimum.at(first_side, index.gid[in_split], record_split[in_split])
  seen_earlier = in_split & (first_side[index.gid] < record_split)
  mixed = _mixed_groups(index.gid, labels, in_split, index.num_groups)
  ambiguous = in_split & ~seen_earlier & (record_split > TRAIN) & mixed[index.gid]
  record_split[seen_earlier | ambiguous] = NONE
  splits = _named_splits(record_split, GROUP_SIDES)

  warnings = list(notes)
  for name in GROUP_SIDES:
    positions = splits[name]
    if not len(positions):
      warnings.append(f"{name} is empty" + (": a run has no validation to pick its best "
                                            "checkpoint by" if name == "val" else ""))
      continue
    missing = [c for c in index.classes if c not in set(index.generator[positions].tolist())]
    if missing:
      warnings.append(f"classes missing from {name}: {', '.join(missing)} (whole groups cannot "
                      "balance them)")
  if (valid & ~grouped).any():
    warnings.append(f"{int((valid & ~grouped).sum())} records have no group and are in no split")
  report = _report(index, splits, labels, warnings=warnings, dropped={
      "image identical to one on an earlier side (train, val, test)": np.flatnonzero(seen_earlier),
      "val/test image present under several labels": np.flatnonzero(ambiguous)})
  report["per_group"] = {name: _counts(index.group[p], ()) for name, p in splits.items()}
  report["num_groups"] = {name: int((side_of_group == s).sum())
                          for s, name in enumerate(GROUP_SIDES)}
  options = {
      "seed": seed, "official": False, "disjoint_by": "sha256", "group_rule": GROUP_RULE,
      "requested": {"test": str(test_groups), "val": str(val_groups)},
      **{f"{name}_groups": [names[g] for g in np.flatnonzero(side_of_group == s)]
         for s, name in ((TEST, "test"), (VAL, "val"))},
  }
  return _manifest(index, manifests.manifest_name("group"), "group", options, index.classes,
                   splits, report)


# ----------------------------------------------------------------------------------------------
# Official-compatible splits.
# ----------------------------------------------------------------------------------------------


def _official_samples(index: _Index) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(positions of the official sample list in its order, {reason: positions left out}).

  Step 0 and 1 of the module docstring: what the official loader opens and keeps, in the order
  it lists it.
  """
  model_folder, semantic_folder = index.origin
  names = np.where(index.filename != "", index.filename,
                   np.array([k.rsplit("/", 1)[-1] for k in index.key.tolist()], dtype=object)
                   ).astype(str)
  official_models = set(gen_lib.OFFICIAL_MODEL_ORDER)
  left_out = {
      "in a model folder the official code does not open":
          ~np.isin(model_folder, list(official_models)),
      "of a semantic class the official code does not know":
          ~np.isin(index.semantic, list(gen_lib.SEMANTIC_ORDER)),
  }
  known = ~left_out["in a model folder the official code does not open"] & ~left_out[
      "of a semantic class the official code does not know"]
  expected_folder = np.array([gen_lib.SEMANTICS[s][0] if s in gen_lib.SEMANTICS else ""
                              for s in index.semantic.tolist()], dtype=object).astype(str)
  left_out["outside its semantic class's official folder"] = known & (
      semantic_folder != expected_folder)
  kept = known & ~left_out["outside its semantic class's official folder"]
  refused = np.zeros(len(index), bool)
  for i in np.flatnonzero(kept):
    refused[i] = sources.official_rule(names[i], model_folder[i]) is not None
  left_out["file name refused by the official selection rules"] = refused
  kept &= ~refused
  model_rank = {m: r for r, m in enumerate(gen_lib.OFFICIAL_MODEL_ORDER)}
  semantic_rank = {m: r for r, m in enumerate(gen_lib.SEMANTIC_ORDER)}
  keys = sorted((model_rank[model_folder[i]], semantic_rank[index.semantic[i]], names[i],
                 index.key[i], i) for i in np.flatnonzero(kept))
  order, over_cap, folder, taken = [], [], None, 0
  for m, sem, _, _, i in keys:
    if (m, sem) != folder:
      folder, taken = (m, sem), 0
    if taken < sources.MAX_PER_FOLDER:
      order.append(i)
      taken += 1
    else:
      over_cap.append(i)
  left_out[f"over the official {sources.MAX_PER_FOLDER}-file cap of its folder"] = np.isin(
      np.arange(len(index)), over_cap)
  return (np.array(order, dtype=np.int64),
          {reason: np.flatnonzero(mask) for reason, mask in left_out.items() if mask.any()})


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


def _official_report(index: _Index, splits: dict[str, np.ndarray],
                     left_out: dict[str, np.ndarray]) -> dict[str, Any]:
  """The report of an official split: _report's, plus what the official loader would not load."""
  model_folder = index.origin[0]
  warnings = []
  summary = {}
  for reason, positions in left_out.items():
    by = _counts(model_folder[positions] if "model folder" in reason else
                 np.char.add(np.char.add(model_folder[positions], "/"), index.semantic[positions]),
                 gen_lib.OFFICIAL_MODEL_ORDER)
    summary[reason] = {"count": int(len(positions)), "by_folder": by,
                       "keys": index.key[positions[:NUM_EXAMPLES]].tolist()}
  if left_out:
    total = sum(len(p) for p in left_out.values())
    warnings.append(f"left out {total} records the official loader would not load: " + "; ".join(
        f"{v['count']} {reason} (" + ", ".join(f"{k} {n}" for k, n in list(
            v["by_folder"].items())[:6]) + (", ..." if len(v["by_folder"]) > 6 else "") + ")"
        for reason, v in summary.items()))
  skipped = _ingest_skipped(index.root)
  if skipped:
    warnings.append(f"ingest skipped {skipped} unreadable or corrupt files that the official "
                    "loader would list (and fail to open); the list here lacks them")
  labels = index.labels(index.classes)
  report = _report(index, splits, labels, warnings=warnings)
  report["official_left_out"] = summary
  return report


def _ingest_skipped(root: str) -> int:
  try:
    with open(os.path.join(root, "ingest_report.json")) as f:
      return int(json.load(f).get("files_skipped", 0))
  except (OSError, ValueError, AttributeError):
    return 0


def _official_index(ds):
  """(index, labels under the kept classes, those classes, sample order, left-out records)."""
  index = _Index(ds)
  order, left_out = _official_samples(index)
  if not len(order):
    raise SplitError(f"none of the {len(index)} records is one the official loader would load ("
                     + "; ".join(f"{len(p)} {reason}" for reason, p in left_out.items()) + ")",
                     "--official")
  present = set(index.generator[order].tolist())
  classes = [c for c in index.classes if c in present]
  return index, index.labels(classes), classes, order, left_out


def official_standard_split(ds: records.Dataset, *, seed: int = 42,
                            ratios: Sequence[float] = STANDARD_RATIOS) -> dict[str, Any]:
  """The standard split exactly as the official code computes it (see the module docstring)."""
  ratios = _check_ratios(ratios, 3)
  index, labels, classes, order, left_out = _official_index(ds)
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
  options = {"seed": seed, "ratios": ratios, "official": True, "disjoint_by": None}
  return _manifest(index, manifests.manifest_name("standard", official=True), "standard", options,
                   classes, splits, _official_report(index, splits, left_out))


def official_semantic_split(ds: records.Dataset, semantic: str | int, *, seed: int = 42,
                            ratios: Sequence[float] = OFFICIAL_SEMANTIC_RATIOS) -> dict[str, Any]:
  """The semantic-task split exactly as the official code computes it (see the module docstring)."""
  ratios = _check_ratios(ratios, 2)
  index, labels, classes, order, left_out = _official_index(ds)
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
  options = {"seed": seed, "ratios": ratios, "semantic": chosen, "official": True,
             "disjoint_by": None}
  return _manifest(index, manifests.manifest_name("semantic", semantic=chosen, official=True),
                   "semantic", options, classes, splits, _official_report(index, splits, left_out))


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
  if "num_groups" in report:
    lines.append("groups".ljust(width) + "".join(f" {report['num_groups'].get(s, 0):>{w}}"
                                                 for s, w in zip(split_names, cols)))
    for side in ("test", "val"):
      named = opts.get(f"{side}_groups", [])
      lines.append(f"{side} groups: " + ", ".join(named[:10])
                   + (f", ... ({len(named)} in all)" if len(named) > 10 else ""))
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
  parser.add_argument("--protocol", required=True,
                      choices=("standard", "semantic", "openset", "group"))
  parser.add_argument("--semantic", help="semantic protocol: a class name (cat, Scene/bedroom, "
                      "...) or task number 1 (cat), 2 (bedroom), 3 (FFHQ)")
  parser.add_argument("--fold", default="0", help="open-set fold, 0..num_folds-1, or 'all'")
  parser.add_argument("--num_folds", type=int, default=5)
  parser.add_argument("--seed", type=int, default=42)
  parser.add_argument("--ratios", help="comma-separated split ratios (default 0.8,0.1,0.1; "
                      "semantic 0.9,0.1, with --official 0.8,0.2 as the official code)")
  parser.add_argument("--test_groups", help="group protocol: N groups to draw with the seed, or "
                      "a comma-separated list of group names ('7,' names a group called 7)")
  parser.add_argument("--val_groups", help="group protocol: as --test_groups (default: as many "
                      "groups as test)")
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
  if args.official and args.protocol in ("openset", "group"):
    parser.error(f"--official exists for standard and semantic only (the official code has no "
                 f"{args.protocol} split)")
  if args.protocol == "group" and not args.test_groups:
    parser.error("--protocol group needs --test_groups (a count or a list of group names)")
  if args.protocol != "group" and (args.test_groups or args.val_groups):
    parser.error("--test_groups and --val_groups belong to --protocol group")
  if args.fold != "all" and not args.fold.isdigit():
    parser.error(f"--fold must be a number or 'all', not {args.fold!r}")
  if args.fold == "all" and args.out:
    parser.error("--out names one file; --fold all writes one manifest per fold")
  return args


def main(argv: Sequence[str] | None = None) -> list[str]:
  args = _parse_args(argv)
  ds = records.Dataset(_cli.require_dataset(args.data))
  try:
    ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else None
  except ValueError:
    raise _cli.fail(f"--ratios {args.ratios}: expected comma-separated numbers, e.g. 0.8,0.1,0.1"
                    ) from None
  kw: dict[str, Any] = {"seed": args.seed}
  if ratios:
    kw["ratios"] = ratios
  try:
    if args.protocol == "standard":
      made = [standard_split(ds, official=args.official, **kw)]
    elif args.protocol == "semantic":
      made = [semantic_split(ds, args.semantic, official=args.official, **kw)]
    elif args.protocol == "group":
      if ratios:
        raise SplitError("the group protocol splits by --test_groups and --val_groups, not "
                         "ratios", f"--ratios {args.ratios}")
      made = [group_split(ds, args.test_groups, args.val_groups, seed=args.seed)]
    else:
      folds = range(args.num_folds) if args.fold == "all" else [int(args.fold)]
      made = [openset_split(ds, k, num_folds=args.num_folds,
                            unknown_fraction=args.unknown_fraction, **kw) for k in folds]
  except SplitError as e:
    raise _cli.fail(f"{e.flag}: {e}" if e.flag else str(e)) from None
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
  sys.exit(_cli.run(main, sys.argv[1:]))
