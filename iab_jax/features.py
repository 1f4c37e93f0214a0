"""The frozen-feature cache: a frozen network's outputs, computed once and read by every later run.

Methods with a frozen backbone (CLIP-LR's ViT-H/14, Li et al.'s CLIP RN50x16, the ACM detector's
ViT-L/14) declare it as a `methods.base.FrozenFeatures`. Its outputs on a split at a degradation
level depend only on

  the network and its weights (the spec's `identity`), its input transform, the dataset (its
  fingerprint), the split's records and the degradation level,

so they are stored under `<cache root>/<name>-<split>-L<level>-<key>/`, the key a digest of all of
these. A second run of the same config, or another method sharing the backbone, extracts nothing
(the log says so) and never builds the network or reads its weights.

Extraction is a jitted, data-parallel pass over the split (the same input pipeline and mesh as
training). It writes a chunk file every `chunk_batches` batches; a killed extraction resumes after
its last complete chunk. The finished cache is one `features.npy` (records x dim, float32, read
memory-mapped), the split's `positions.npy`, and `done.json` (what it is, how long it took).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from typing import Any

import numpy as np

from iab_jax import console

FORMAT_VERSION = 1
DONE_JSON = "done.json"
FEATURES_NPY = "features.npy"
POSITIONS_NPY = "positions.npy"


def cache_root(config, dataset) -> str:
  """config.feature_cache, or <data_dir>/features."""
  return config.get("feature_cache") or os.path.join(dataset.root, "features")


def spread(positions, limit: int) -> np.ndarray:
  """`limit` of `positions` evenly spread over them (all when limit is 0 or larger): a short run
  (runlocal) still sees every class of a split sorted by class."""
  positions = np.asarray(positions, np.int64)
  if limit and limit < len(positions):
    positions = positions[np.linspace(0, len(positions) - 1, limit).round().astype(int)]
  return positions


def cache_key(spec, dataset, positions: np.ndarray, level: int) -> str:
  from iab_jax.data import transforms

  description = {
      "version": FORMAT_VERSION,
      "identity": spec.identity,
      "transform": transforms.parse(spec.transform).spec,
      "dataset": dataset.info.get("fingerprint") or os.path.abspath(dataset.root),
      "positions": hashlib.sha256(np.asarray(positions, np.int64).tobytes()).hexdigest(),
      "level": int(level),
  }
  return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


@dataclasses.dataclass
class FeatureTable:
  """A split's cached features, looked up by record position."""

  positions: np.ndarray  # (n,) record positions, in split order
  values: np.ndarray  # (n, dim) float32, memory-mapped
  directory: str

  def __post_init__(self):
    self._order = np.argsort(self.positions, kind="stable")
    self._sorted = self.positions[self._order]

  def lookup(self, positions: np.ndarray) -> np.ndarray:
    """Features of records at `positions` (each must be in this split)."""
    positions = np.asarray(positions, np.int64)
    where = np.searchsorted(self._sorted, positions)
    where = np.minimum(where, len(self._sorted) - 1)
    if not np.array_equal(self._sorted[where], positions):
      missing = positions[self._sorted[where] != positions][:3].tolist()
      raise KeyError(f"records {missing} are not in the feature cache {self.directory}")
    return np.asarray(self.values[self._order[where]])


class Extractors:
  """The frozen networks of one process, built (weights read, step compiled) on first need and
  shared by every split and level."""

  def __init__(self, mesh):
    self.mesh = mesh
    self._built: dict[str, Any] = {}

  def get(self, spec):
    if spec.identity not in self._built:
      import jax

      from iab_jax import sharding

      console.say("features %s: building the frozen network (%s) ...", spec.name, spec.identity)
      with console.Timer() as t:
        apply, variables = spec.build()
        variables = sharding.replicate(variables, self.mesh)
      repl = sharding.replicated(self.mesh)
      step = jax.jit(lambda v, images: apply(v, images).astype("float32"),
                     in_shardings=(repl, sharding.batch_sharded(self.mesh)), out_shardings=repl)
      self._built[spec.identity] = (step, variables, {})
      console.say("features %s: built in %.1f s", spec.name, t.seconds)
    return self._built[spec.identity]

  def __call__(self, spec, images):
    step, variables, compiled = self.get(spec)
    key = (images.shape, images.dtype.name)
    if key not in compiled:
      with console.Timer() as t:
        compiled[key] = step.lower(variables, images).compile()
      console.say("features %s: compiled the extraction step (batch %s) in %.1f s", spec.name,
                  "x".join(map(str, images.shape)), t.seconds)
    return compiled[key](variables, images)


def _chunk_paths(directory: str) -> list[str]:
  """Complete chunk files, in order, up to the first gap."""
  paths = []
  for i in range(len(glob.glob(os.path.join(directory, "chunk-*.npy")))):
    path = os.path.join(directory, f"chunk-{i:05d}.npy")
    if not os.path.exists(path):
      break
    paths.append(path)
  return paths


def _save_atomic(path: str, array: np.ndarray) -> None:
  tmp = f"{path}.tmp{os.getpid()}.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def _gathered(local: np.ndarray) -> np.ndarray:
  """A per-process slice of a batch field -> the global batch's field, in the global row order."""
  import jax

  local = np.asarray(local)
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def _save_chunk(directory: str, index: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
  """A chunk as one float64 array: column 0 the record position, then the features (float64
  holds every float32 and every position exactly)."""
  rows = [np.concatenate([p[:, None].astype(np.float64), v.astype(np.float64)], axis=1)
          for p, v in parts]
  _save_atomic(os.path.join(directory, f"chunk-{index:05d}.npy"), np.concatenate(rows))


def _load(directory: str) -> FeatureTable:
  return FeatureTable(np.load(os.path.join(directory, POSITIONS_NPY)),
                      np.load(os.path.join(directory, FEATURES_NPY), mmap_mode="r"), directory)


def features_for(spec, *, data, split: str, level: int, root: str, extractors: Extractors,
                 batch_size: int, reading: dict[str, Any], chunk_batches: int = 16,
                 max_examples: int = 0) -> FeatureTable:
  """The cached features of `spec` on `split` at degradation `level`, extracted if absent.

  max_examples: when > 0, only that many of the split's records (evenly spread), as the
  evaluators' limit does; they form their own cache entry.
  """
  import jax

  from iab_jax import sharding
  from iab_jax.data import pipeline

  positions = spread(data.positions(split), max_examples)
  key = cache_key(spec, data.dataset, positions, level)
  directory = os.path.join(root, f"{spec.name}-{split}-L{level}-{key}")
  name = f"{spec.name} on {split} (level {level})"
  if os.path.exists(os.path.join(directory, DONE_JSON)):
    console.say("features %s: cached in %s, nothing to extract", name, directory)
    return _load(directory)

  writer = jax.process_index() == 0
  os.makedirs(directory, exist_ok=True)
  chunk_size = chunk_batches * batch_size
  done_chunks = _chunk_paths(directory)
  start = len(done_chunks) * chunk_size
  console.say("features %s: extracting %d of %d images%s", name, len(positions) - start,
              len(positions), f" (resuming after {start})" if start else "")
  started = time.perf_counter()
  pending: list[np.ndarray] = []
  chunk_index = len(done_chunks)
  if start < len(positions):
    it = iter(pipeline.make_dataset(data.dataset, positions[start:], data.labels, spec.transform,
                                    batch_size=batch_size, train=False, degradation=level,
                                    **reading))
    try:
      for batch in it:
        images = sharding.global_batch({"image": batch["image"]}, extractors.mesh)["image"]
        values = np.asarray(sharding.to_host(extractors(spec, images)))
        # The global batch's rows are the processes' slices in process order; positions and the
        # padding mask are gathered the same way.
        mask, where = _gathered(batch["mask"]), _gathered(batch["position"])
        pending.append((where[mask], values[mask]))
        if len(pending) == chunk_batches:
          if writer:
            _save_chunk(directory, chunk_index, pending)
          chunk_index, pending = chunk_index + 1, []
    finally:
      pipeline.close(it)
    if pending and writer:
      _save_chunk(directory, chunk_index, pending)
  if writer:
    chunks = _chunk_paths(directory)
    dim = np.load(chunks[0], mmap_mode="r").shape[1] - 1
    out = np.lib.format.open_memmap(os.path.join(directory, f"{FEATURES_NPY}.tmp.npy"), mode="w+",
                                    dtype=np.float32, shape=(len(positions), dim))
    stored = np.zeros(len(positions), np.int64)
    row = 0
    for path in chunks:
      part = np.load(path)
      out[row:row + len(part)] = part[:, 1:]
      stored[row:row + len(part)] = part[:, 0]
      row += len(part)
    if row != len(positions) or set(stored.tolist()) != set(positions.tolist()):
      raise RuntimeError(f"feature cache {directory}: {row} rows for {len(positions)} records")
    out.flush()
    del out
    os.replace(os.path.join(directory, f"{FEATURES_NPY}.tmp.npy"),
               os.path.join(directory, FEATURES_NPY))
    _save_atomic(os.path.join(directory, POSITIONS_NPY), stored)
    with open(os.path.join(directory, DONE_JSON), "w") as f:
      json.dump({"name": spec.name, "identity": spec.identity, "transform": spec.transform,
                 "split": split, "level": int(level), "num_records": int(len(positions)),
                 "dim": int(dim), "seconds": round(time.perf_counter() - started, 3),
                 "dataset": data.dataset.info.get("fingerprint")}, f, indent=1)
    for path in chunks:
      os.remove(path)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"features {directory}")
  console.say("features %s: %d images in %.1f s", name, len(positions) - start,
              time.perf_counter() - started)
  return _load(directory)


class Provider:
  """A run's access to its method's frozen features: one table per (spec, split, level),
  extracted on first use; `add(batch, split, level)` puts them into a local batch by position."""

  def __init__(self, method, *, data, config, mesh, batch_size: int, reading: dict[str, Any]):
    self.specs = list(method.frozen_features())
    self.data, self.batch_size, self.reading = data, batch_size, reading
    self.root = cache_root(config, data.dataset)
    self.max_examples = int(config.get("max_eval_examples", 0) or 0)
    self.extractors = Extractors(mesh)
    self._tables: dict[tuple[str, str, int, int], FeatureTable] = {}

  def __bool__(self) -> bool:
    return bool(self.specs)

  def table(self, spec, split: str, level: int, limit: int = 0) -> FeatureTable:
    key = (spec.name, split, level, limit)
    if key not in self._tables:
      self._tables[key] = features_for(
          spec, data=self.data, split=split, level=level, root=self.root,
          extractors=self.extractors, batch_size=self.batch_size, reading=self.reading,
          max_examples=limit)
    return self._tables[key]

  def tables(self, split: str, level: int, limit: int = 0) -> dict[str, FeatureTable]:
    return {spec.name: self.table(spec, split, level, limit) for spec in self.specs}

  def add(self, batch: dict[str, Any], split: str, level: int, limit: int = 0) -> dict[str, Any]:
    if not self.specs:
      return batch
    return {**batch, "features": {name: t.lookup(batch["position"])
                                  for name, t in self.tables(split, level, limit).items()}}
