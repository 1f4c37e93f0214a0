"""Metadata shortcuts: how much of the label a classifier can read off an image's format and size.

On real data the size alone often names the generator (1024x1024 from two generators, 512x512
from two others, 256x256 from the rest), and the real class is partly JPEG while every generated
image is PNG. Resizing to the model's input does not remove this: interpolation leaves a trace of
the original size. An attributor can then score well without learning any generator fingerprint.
Two tools measure it, both on the metadata alone (no pixel is read):

`size_audit` (ingest's report) flags every (format, width, height) group whose label mix is far
from the dataset's, by this rule (RULE):
  TV = 1/2 sum_c |p_group(c) - p(c)| is the total-variation distance between the group's label
  distribution and the dataset's; it is divided by its largest possible value, 1 - min_c p(c)
  (a group of the rarest class alone), so that 0 means "the dataset's mix" and 1 "as far from it
  as any group can be", whatever the number of classes and their balance. A group holding at
  least 1% of the records (and at least 10 records) is flagged when this normalised distance
  exceeds 0.5. (Without the normalisation, two balanced classes could never exceed 0.5 even with
  one size per class; with it, a size shared by two of 23 balanced classes scores 0.95 and one
  shared by 19 of them 0.18.)
  It also gives the in-sample accuracy of predicting each group's majority label: an upper
  bound of what the metadata can tell, to compare with the largest class's share.

`metadata_baseline` (results.json, Table 3, `data_prep.inspect --shortcut_baseline`) is the honest
version on a split: the majority training label of each (format, width, height) group, fit on the
train split and scored on the test split.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FEATURES = ("format", "width", "height")
MIN_SHARE = 0.01  # of the records, for a group to be flagged
MIN_RECORDS = 10  # likewise: a single odd file is not a shortcut a model learns
MAX_DISTANCE = 0.5  # normalised total-variation distance above which a group is flagged
RULE = (f"a (format, width, height) group holding >= {MIN_SHARE:.0%} of the records (and >= "
        f"{MIN_RECORDS}) is flagged when the total-variation distance between its label "
        "distribution and the dataset's, divided by its largest possible value 1 - min_c p(c), "
        f"exceeds {MAX_DISTANCE}")
BASELINE_RULE = ("predict, for each (format, width, height) group, the majority label of the "
                 "group's training records (ties: the lowest label id); a group without training "
                 "records gets the overall majority training label")


def group_ids(formats, widths, heights) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
  """(group id of each record, the groups as (format, width, height)), groups in sorted order."""
  keys = [(str(f), int(w), int(h)) for f, w, h in zip(formats, widths, heights)]
  groups = sorted(set(keys))
  index = {g: i for i, g in enumerate(groups)}
  return np.array([index[k] for k in keys], dtype=np.int64), groups


def _name(group: tuple[str, int, int]) -> str:
  return f"{group[0]} {group[1]}x{group[2]}"


def size_audit(formats, widths, heights, labels: Sequence[str]) -> dict[str, Any]:
  """The flagged (format, width, height) groups of a dataset's records (see RULE).

  `labels` holds each record's class name. Returns rule, num_records, num_groups,
  metadata_accuracy (in-sample: each group predicts its majority class), majority_rate (the
  largest class's share) and flagged: one dict per flagged group, largest first, with format,
  width, height, count, share, distance and its classes {name: count} (at most five, largest first).
  """
  labels = np.asarray(labels).astype(str)
  audit: dict[str, Any] = {"rule": RULE, "num_records": int(len(labels)), "num_groups": 0,
                           "metadata_accuracy": None, "majority_rate": None, "flagged": []}
  if not len(labels):
    return audit
  gid, groups = group_ids(formats, widths, heights)
  names, label_ids = np.unique(labels, return_inverse=True)
  label_ids = label_ids.reshape(-1)
  counts = np.zeros((len(groups), len(names)), np.int64)
  np.add.at(counts, (gid, label_ids), 1)
  n = len(labels)
  p = counts.sum(axis=0) / n
  audit["num_groups"] = len(groups)
  audit["metadata_accuracy"] = float(counts.max(axis=1).sum() / n)
  audit["majority_rate"] = float(p.max())
  largest = 1.0 - p.min()
  if largest <= 0:  # a single class: nothing to tell apart
    return audit
  sizes = counts.sum(axis=1)
  distance = 0.5 * np.abs(counts / sizes[:, None] - p[None, :]).sum(axis=1) / largest
  big = (sizes >= MIN_SHARE * n) & (sizes >= MIN_RECORDS)
  flagged = np.flatnonzero(big & (distance > MAX_DISTANCE))
  for g in flagged[np.argsort(-sizes[flagged], kind="stable")]:
    top = np.argsort(-counts[g], kind="stable")[:5]
    audit["flagged"].append({
        "format": groups[g][0], "width": groups[g][1], "height": groups[g][2],
        "count": int(sizes[g]), "share": float(sizes[g] / n), "distance": float(distance[g]),
        "classes": {str(names[c]): int(counts[g, c]) for c in top if counts[g, c]}})
  return audit


def size_warnings(audit: dict[str, Any]) -> list[str]:
  """One line per flagged group, and a headline when any is flagged."""
  if not audit["flagged"]:
    return []
  notes = [f"size shortcut: the file format and size alone give the right class for "
           f"{audit['metadata_accuracy']:.0%} of the records (the largest class is "
           f"{audit['majority_rate']:.0%}); resizing keeps a trace of the original size, so a "
           f"model can learn it instead of the generator. Flagged ({audit['rule']}):"]
  for g in audit["flagged"]:
    mix = ", ".join(f"{name} {count / g['count']:.0%}" for name, count in g["classes"].items())
    notes.append(f"size shortcut: {_name((g['format'], g['width'], g['height']))}: "
                 f"{g['count']} records ({g['share']:.0%}), {mix}; distance {g['distance']:.2f}")
  return notes


def metadata_baseline(dataset, manifest, train_split: str = "train",
                      test_split: str = "test") -> dict[str, Any]:
  """Test accuracy of a classifier that sees only each image's (format, width, height).

  It predicts, for each group, the majority label of the group's records in `train_split` (ties:
  the lowest label id); a group absent from training gets the overall majority training label.
  Labels are `manifests.labels_for(manifest, dataset)`; records with label -1 (generators outside
  the manifest's classes) are left out of both splits.

  Returns (keys stable, read by the trainer for results.json and Table 3):
    accuracy        test accuracy of that classifier (None when the test split has no record)
    chance          1 / number of classes
    majority_rate   test accuracy of always predicting the overall majority training label
                    (None without test records)
    majority_class  that label's class name
    num_groups      (format, width, height) groups present in the training records
    num_train, num_test   records used (label >= 0)
    unseen_test     test records whose group has no training record
    num_classes, train_split, test_split
    features        ["format", "width", "height"]
    rule            the classifier, in words
  Raises ValueError when a split is missing or the training split has no labelled record.
  """
  from iab_jax.data import manifests

  for split in (train_split, test_split):
    if split not in manifest.splits:
      raise ValueError(f"manifest {manifest.name or manifest.path!r} has no split {split!r} "
                       f"(it has {', '.join(manifest.splits)})")
  labels = manifests.labels_for(manifest, dataset).astype(np.int64)
  num_classes = len(manifest.classes)
  train = np.asarray(manifest.splits[train_split], np.int64)
  test = np.asarray(manifest.splits[test_split], np.int64)
  train, test = train[labels[train] >= 0], test[labels[test] >= 0]
  if not len(train):
    raise ValueError(f"split {train_split!r} has no record of the manifest's classes to fit on")
  gid, groups = group_ids(dataset.column("format"), dataset.column("width"),
                          dataset.column("height"))
  counts = np.zeros((len(groups), num_classes), np.int64)
  np.add.at(counts, (gid[train], labels[train]), 1)
  seen = counts.sum(axis=1) > 0
  overall = int(np.argmax(np.bincount(labels[train], minlength=num_classes)))
  predict = np.where(seen, np.argmax(counts, axis=1), overall)
  truth = labels[test]
  return {
      "accuracy": float(np.mean(predict[gid[test]] == truth)) if len(test) else None,
      "chance": 1.0 / num_classes,
      "majority_rate": float(np.mean(truth == overall)) if len(test) else None,
      "majority_class": manifest.classes[overall],
      "num_groups": int(seen.sum()),
      "num_train": int(len(train)),
      "num_test": int(len(test)),
      "unseen_test": int((~seen[gid[test]]).sum()),
      "num_classes": num_classes,
      "train_split": train_split,
      "test_split": test_split,
      "features": list(FEATURES),
      "rule": BASELINE_RULE,
  }


def format_baseline(result: dict[str, Any]) -> str:
  """One line: the baseline's test accuracy next to chance and the majority class."""
  def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"

  return (f"metadata-only baseline (format, width, height -> majority {result['train_split']} "
          f"label): {result['test_split']} accuracy {pct(result['accuracy'])} vs chance "
          f"{pct(result['chance'])} and majority class {pct(result['majority_rate'])} "
          f"({result['majority_class']}); {result['num_groups']} groups, {result['num_test']} "
          f"test records, {result['unseen_test']} of them in groups unseen in training")
