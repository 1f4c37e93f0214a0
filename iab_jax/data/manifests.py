"""Split manifests: which records of a dataset a run trains, validates and tests on.

A manifest is a JSON file, by default `<data>/splits/<name>.json`, written by `data_prep.split`:

  {
   "format": "iab_jax.manifest", "version": 1,
   "name": "standard",                 file stem; runs log it with the digest
   "protocol": "standard" | "semantic" | "openset" | "group",
   "options": {...},                   seed, ratios, semantic, fold, official, test_groups, ...
   "dataset": {"fingerprint": ..., "num_records": ...},   from dataset.json
   "classes": [...],                   the run's label map (open-set: the known classes only)
   "digest": "...",                    sha256 over classes and splits: names one split exactly
   "report": {...},                    sizes per split and class (group: and per group),
                                       duplicates, records left out, warnings
   "splits": {"train": [...], ...}     record positions in dataset order
  }

Positions are kept in the order the splitter wrote them: ascending for our own splits, the
official code's shuffled order for `--official` manifests (that order is part of what the official
code does, e.g. which sample the even cut of train drops). The dataset fingerprint covers every
record's sha256 in dataset order, so a matching fingerprint pins each position to its image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from iab_jax.data import generators

FORMAT = "iab_jax.manifest"
VERSION = 1
SPLITS_DIR = "splits"


@dataclasses.dataclass
class Manifest:
  """A loaded manifest; `splits` maps a split name to an int64 array of record positions."""

  protocol: str
  options: dict[str, Any]
  classes: list[str]
  splits: dict[str, np.ndarray]
  report: dict[str, Any]
  fingerprint: str
  num_records: int
  name: str = ""
  digest: str = ""
  path: str = ""

  def check(self, dataset) -> None:
    """Raises ValueError unless this manifest was made for `dataset` (a records.Dataset)."""
    theirs = dataset.info.get("fingerprint")
    if theirs != self.fingerprint or len(dataset) != self.num_records:
      raise ValueError(
          f"manifest {self.path or self.name!r} was made for dataset fingerprint "
          f"{self.fingerprint} ({self.num_records} records), but {dataset.root!r} has "
          f"fingerprint {theirs} ({len(dataset)} records); "
          "rebuild the manifest with `python -m data_prep.split`")


def manifest_name(protocol: str, *, semantic: str | None = None, fold: int | None = None,
                  official: bool = False) -> str:
  """The default file stem of a manifest: standard, semantic_cat_official, openset_fold2, group."""
  if protocol == "standard":
    name = "standard"
  elif protocol == "group":
    if official:
      raise ValueError("the official code has no group split")
    return "group"
  elif protocol == "semantic":
    if not semantic:
      raise ValueError("a semantic manifest needs its semantic class")
    name = f"semantic_{semantic}"
  elif protocol == "openset":
    if fold is None:
      raise ValueError("an open-set manifest needs its fold")
    if official:
      raise ValueError("the official code has no open-set split")
    return f"openset_fold{fold}"
  else:
    raise ValueError(f"unknown protocol {protocol!r} (standard, semantic, openset or group)")
  return name + "_official" if official else name


def default_manifest_path(data_root: str, protocol: str, **kwargs) -> str:
  return os.path.join(data_root, SPLITS_DIR, manifest_name(protocol, **kwargs) + ".json")


def split_digest(classes: Sequence[str], splits: Mapping[str, Sequence[int]]) -> str:
  digest = hashlib.sha256(json.dumps(list(classes)).encode())
  for name in sorted(splits):
    digest.update(name.encode())
    digest.update(np.asarray(splits[name], dtype="<i8").tobytes())
  return digest.hexdigest()


def make_manifest(*, name: str, protocol: str, options: Mapping[str, Any],
                  dataset_info: Mapping[str, Any], classes: Sequence[str],
                  splits: Mapping[str, Sequence[int]], report: Mapping[str, Any]) -> dict[str, Any]:
  """Assembles the JSON dict of a manifest (the splitter's output) with its digest."""
  splits = {k: [int(i) for i in v] for k, v in splits.items()}
  return {
      "format": FORMAT,
      "version": VERSION,
      "name": name,
      "protocol": protocol,
      "options": dict(options),
      "dataset": {"fingerprint": dataset_info["fingerprint"],
                  "num_records": int(dataset_info["num_records"])},
      "classes": list(classes),
      "digest": split_digest(classes, splits),
      "report": dict(report),
      "splits": splits,
  }


def _dumps(manifest: Mapping[str, Any]) -> str:
  # The header stays readable (indented, first in the file); each split is one long line rather
  # than one line per position, which would make a full-size manifest a million lines long.
  head = {k: v for k, v in manifest.items() if k != "splits"}
  lines = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
  splits = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                      for k, v in manifest["splits"].items())
  return f"{lines},\n \"splits\": {{\n{splits}\n }}\n}}\n"


def save_manifest(manifest: Mapping[str, Any], path: str) -> str:
  """Writes a manifest dict atomically (a reader never sees half a file); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(_dumps(manifest))
  os.replace(tmp, path)
  return path


def from_dict(data: Mapping[str, Any], path: str = "") -> Manifest:
  if data.get("format") != FORMAT:
    raise ValueError(f"{path or 'manifest'}: not an iab_jax manifest "
                     f"(format {data.get('format')!r})")
  if data.get("version", 0) > VERSION:
    raise ValueError(f"{path}: manifest version {data['version']} is newer than this reader "
                     f"({VERSION})")
  num_records = int(data["dataset"]["num_records"])
  splits = {}
  for name, positions in data["splits"].items():
    arr = np.asarray(positions, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= num_records):
      raise ValueError(f"{path}: split {name!r} names positions outside [0, {num_records})")
    splits[name] = arr
  return Manifest(protocol=data["protocol"], options=dict(data.get("options", {})),
                  classes=list(data["classes"]), splits=splits, report=dict(data.get("report", {})),
                  fingerprint=data["dataset"]["fingerprint"], num_records=num_records,
                  name=data.get("name", ""), digest=data.get("digest", ""), path=path)


def load_manifest(path: str, dataset=None) -> Manifest:
  """Reads a manifest; given a records.Dataset, also checks that it was made for that data."""
  with open(path) as f:
    manifest = from_dict(json.load(f), path)
  if dataset is not None:
    manifest.check(dataset)
  return manifest


def labels_for(manifest: Manifest, dataset) -> np.ndarray:
  """Each record's label under the manifest's classes (int32, -1 where its generator is not one).

  Labels come from the generator name, not the dataset's label column: an open-set run trains on
  the known classes only, so its label ids differ from the dataset's. A detection manifest's
  classes are ("real", "fake"): every generator's images are "fake".
  """
  index = {name: i for i, name in enumerate(manifest.classes)}
  names, inverse = np.unique(dataset.column("generator").astype(str), return_inverse=True)
  if manifest.protocol == "detection":
    lookup = np.array([index["real"] if generators.is_real_name(n) else index["fake"]
                       for n in names], dtype=np.int32)
  else:
    lookup = np.array([index.get(n, -1) for n in names], dtype=np.int32)
  return lookup[inverse.reshape(-1)]
