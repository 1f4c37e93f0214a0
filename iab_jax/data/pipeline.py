"""The grain input pipeline: manifest split -> records -> decode -> degradation -> transform -> batches.

One function, `make_dataset`, serves training and evaluation on one host or many:
  - the split's record positions come from a manifest (iab_jax.data.manifests);
  - training shuffles with a seed shared by all processes, repeats for `num_epochs` (a new order
    each epoch), and each JAX process takes every process_count-th element of that global order, so
    the processes together see each record once per epoch and their local batches form the global
    batch;
  - evaluation keeps the manifest order and pads the split to whole global batches with masked
    copies, so every process runs the same number of fixed-shape steps;
  - a degradation level is a `degrade(k)` op prepended to the method's transform: it acts on the
    decoded original, before any resize, as the benchmark applies it;
  - with a pre-resized cache (iab_jax.data.cache) whose ops begin the transform, records are read
    from the cache and only the remaining ops run (never under a degradation, which needs originals);
  - memory is bounded: batches are formed before the conversion to an iterator (so that worker
    processes give exactly the batches one process gives), and the read-ahead is set explicitly
    in batches, never grain's default of hundreds of elements. A process holds about
    `read_threads + prefetch_batches` batches in flight; each worker process as many again plus
    `worker_buffer_batches` batches queued for the trainer (see `buffered_batches`);
  - every batch is checked for one image shape: a transform that does not end in a fixed size
    (central_crop(256), resize(256, 256), ...) on images of mixed sizes fails with one line naming
    the transform and the two shapes, not deep inside NumPy.

Elements are dicts of numpy arrays: image (HWC, uint8 or float32 after normalize; a stack of
views or a dict of arrays when the transform makes several views), label (int32, -1 for classes
outside the manifest's label map), semantic (int32 index into SEMANTIC_ORDER, -1 if unknown),
levels (int32 (4,) Table 6 family levels), position (int64 record position), mask (bool, False for
padding), what the transform's ops emit (e.g. transform_id), and with partners partner_image,
partner_label, partner_levels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from iab_jax import errors
from iab_jax.data import cache as cache_lib
from iab_jax.data import generators, records, transforms


class RecordsSource(grain.sources.RandomAccessDataSource):
  """Records at given dataset positions, from the dataset's ArrayRecord shards (or a cache's)."""

  def __init__(self, shard_paths: Sequence[str], positions: np.ndarray, mask: np.ndarray):
    self._paths = list(shard_paths)
    self._positions = np.asarray(positions, np.int64)
    self._mask = np.asarray(mask, bool)
    self._source = None

  def __len__(self) -> int:
    return len(self._positions)

  def __getitem__(self, i):
    position = int(self._positions[i])
    if not self._paths:  # no pixels wanted (make_dataset(images=False)): nothing is read
      return {"position": position, "mask": bool(self._mask[i])}
    if self._source is None:  # opened lazily: the source travels to worker processes unopened
      self._source = grain.sources.ArrayRecordDataSource(self._paths)
    return {"raw": self._source[position], "position": position, "mask": bool(self._mask[i])}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __repr__(self) -> str:
    return f"RecordsSource({len(self._paths)} shards, {len(self)} records)"


# Read-ahead defaults, in batches (see make_dataset). At batch 32 of 256x256 float32 images
# (25 MiB a batch) one process holds about (2 + 2) x 25 MiB of batches in flight.
READ_THREADS = 2
PREFETCH_BATCHES = 2
WORKER_BUFFER_BATCHES = 1


SAMPLERS = ("shuffle", "balanced")


class InputError(errors.UserError):
  """The data cannot go through the configured transform (a user error, not a bug)."""


def buffered_batches(read_threads: int = READ_THREADS, prefetch_batches: int = PREFETCH_BATCHES,
                     worker_count: int = 0,
                     worker_buffer_batches: int = WORKER_BUFFER_BATCHES) -> int:
  """About how many batches the pipeline holds at most: its memory is this x one batch.

  Each process that reads (the trainer's, or each worker) has `read_threads` batches being made
  and `prefetch_batches` ready; each worker also queues `worker_buffer_batches` for the trainer.
  """
  per_reader = read_threads + prefetch_batches
  if worker_count <= 0:
    return per_reader
  return worker_count * (per_reader + worker_buffer_batches)


@dataclasses.dataclass
class Prepare:
  """Decodes one record and applies the transform; picklable for grain worker processes.

  Training draws its randomness from grain's per-element generator (seeded by the run's seed and
  the element's place in the stream, so a resumed run draws the same). Evaluation draws from a
  generator seeded by (seed, record position): a random evaluation transform (SSP's patch, a
  test-time crop) gives each image the same draw in every run, whatever else is scored with it.

  partners: each example also gets this many records drawn uniformly from `partner_pool` (the
  training split's positions), through the same transform: "partner_image" (P, ...),
  "partner_label" (P,), "partner_levels" (P, 4).
  """

  transform: transforms.Transform
  labels: np.ndarray  # label of every dataset record under the run's label map
  semantics: np.ndarray  # semantic index of every dataset record
  from_cache: bool
  sixteen_bit: str = "scale"  # 16-bit images: "scale" to 8 bits, or "clip" as the official code
  levels: np.ndarray | None = None  # (records, 4) Table 6 family levels, -1 where unknown
  seed: int = 0
  partners: int = 0
  partner_pool: np.ndarray | None = None
  shard_paths: Sequence[str] = ()  # where partners are read from (the records or the cache)

  def __post_init__(self):
    self._source = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def _decode(self, raw):
    if self.from_cache:
      return cache_lib.decode(raw)
    return records.decode(raw, sixteen_bit=self.sixteen_bit)

  def _levels(self, position):
    return (self.levels[position] if self.levels is not None else np.full(4, -1, np.int32))

  def _partners(self, rng: np.random.Generator) -> dict[str, Any]:
    if self._source is None:
      self._source = grain.sources.ArrayRecordDataSource(list(self.shard_paths))
    chosen = rng.choice(self.partner_pool, size=self.partners)
    views = [self.transform(self._decode(self._source[int(p)]), rng) for p in chosen]
    return {"partner_image": stack_tree(views),
            "partner_label": self.labels[chosen].astype(np.int32),
            "partner_levels": np.stack([self._levels(int(p)) for p in chosen])}

  def __call__(self, element, rng: np.random.Generator | None = None):
    position = element["position"]
    if rng is None and self.transform.is_random:
      rng = np.random.default_rng([self.seed, int(position)])
    example = {}
    if "raw" in element:  # absent when no pixels are wanted (make_dataset(images=False))
      image, emitted = self.transform.apply(self._decode(element["raw"]), rng)
      example = {"image": image, **{k: np.asarray(v) for k, v in emitted.items()}}
    example.update({
        "label": np.int32(self.labels[position]),
        "semantic": np.int32(self.semantics[position]),
        "levels": self._levels(position),
        "position": np.int64(position),
        "mask": np.bool_(element["mask"]),
    })
    if self.partners:
      example.update(self._partners(rng))
    return example

  def random_map(self, element, rng):
    return self(element, rng)


def stack_tree(items: Sequence[Any]) -> Any:
  """Stacks arrays, or dicts of arrays leaf by leaf, along a new first axis."""
  if isinstance(items[0], dict):
    return {k: stack_tree([item[k] for item in items]) for k in items[0]}
  return np.stack(items)


def _shapes(value) -> Any:
  if isinstance(value, dict):
    return {k: _shapes(v) for k, v in value.items()}
  return (value.shape, value.dtype.name)


@dataclasses.dataclass
class Stack:
  """Stacks examples into a batch, refusing images of different shapes with a clear message."""

  transform_spec: str

  def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if "image" not in examples[0]:  # make_dataset(images=False)
      return {key: stack_tree([e[key] for e in examples]) for key in examples[0]}
    first = _shapes(examples[0]["image"])
    for example in examples[1:]:
      shapes = _shapes(example["image"])
      if shapes != first:
        raise InputError(
            f"transform {self.transform_spec!r} yields images of different shapes: "
            f"{first} (record {int(examples[0]['position'])}) and {shapes} (record "
            f"{int(example['position'])}); end it with a fixed-size op such as "
            "central_crop(256) or resize(256, 256)")
    return {key: stack_tree([e[key] for e in examples]) for key in examples[0]}


def balanced_order(labels: np.ndarray, num_epochs: int, seed: int) -> np.ndarray:
  """Indices into `labels` for `num_epochs` epochs of class-balanced batches.

  Each epoch has len(labels) elements. It is made of rounds: a round takes the next element of
  every class, the classes in a fresh random order, from per-class queues that are shuffled and
  refilled (reshuffled) whenever they run out. So any window of the stream as long as the number of
  classes holds each class about once, and batches hold the classes in near-equal numbers however
  unequal the classes are (a small class's images recur within an epoch; a large class's do not
  all appear in it).
  """
  labels = np.asarray(labels)
  classes = np.unique(labels)
  members = [np.flatnonzero(labels == c) for c in classes]
  rng = np.random.default_rng([int(seed), 7919])
  queues = [rng.permutation(m) for m in members]
  cursors = [0] * len(classes)
  n = len(labels)
  out = np.empty(n * num_epochs, np.int64)
  filled = 0
  while filled < len(out):
    for c in rng.permutation(len(classes)):
      if filled == len(out):
        break
      if cursors[c] == len(queues[c]):
        queues[c], cursors[c] = rng.permutation(members[c]), 0
      out[filled] = queues[c][cursors[c]]
      cursors[c] += 1
      filled += 1
  return out


def semantic_ids(dataset: records.Dataset) -> np.ndarray:
  index = {name: i for i, name in enumerate(generators.SEMANTIC_ORDER)}
  return np.array([index.get(s, -1) for s in dataset.column("semantic")], np.int32)


def family_levels(dataset: records.Dataset) -> np.ndarray:
  """(records, 4) int32: every record's Table 6 family levels (-1 where unknown).

  Built once per dataset (a Python pass over the index) and kept on it: every evaluation level
  and every epoch's validation builds a pipeline."""
  cached = getattr(dataset, "_family_levels", None)
  if cached is None:
    column = dataset.column("levels")
    cached = np.asarray([list(v) for v in column], np.int32).reshape(len(column), 4)
    dataset._family_levels = cached  # pylint: disable=protected-access
  return cached


def make_dataset(
    dataset: records.Dataset,
    positions: Sequence[int],
    labels: np.ndarray,
    transform: str,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_epochs: int | None = 1,
    degradation: int = 0,
    cache: str | None = "auto",
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = READ_THREADS,
    prefetch_batches: int = PREFETCH_BATCHES,
    worker_buffer_batches: int = WORKER_BUFFER_BATCHES,
    sixteen_bit: str = "scale",
    sampler: str = "shuffle",
    partners: int = 0,
    partner_pool: Sequence[int] | None = None,
    images: bool = True,
) -> grain.IterDataset:
  """Batches of one split. `batch_size` is global: each process yields batch_size/process_count.

  `cache`: "auto" uses a matching cache of the dataset if one was built, None never does, a path
  names a cache directory (an error if it cannot serve this transform).
  `worker_count` grain processes decode (0: threads of this process); `read_threads`,
  `prefetch_batches` and `worker_buffer_batches` bound the read-ahead (see `buffered_batches`).
  `sixteen_bit`: how 16-bit images become 8-bit, "scale" (ours) or "clip" (the official loader).
  Training only: `sampler` "shuffle" (a new order each epoch) or "balanced" (class-balanced
  batches, see balanced_order; needs num_epochs); `partners` other records per example, drawn
  uniformly from `partner_pool` (default: `positions`), see Prepare.
  `images=False` reads and decodes nothing: batches carry labels, positions and levels only, for a
  method that trains on cached frozen features (the same order, resumable the same way).
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r}; expected one of {', '.join(SAMPLERS)}")
  if (sampler != "shuffle" or partners) and not train:
    raise ValueError("samplers and partners are for training pipelines")
  if sampler == "balanced" and num_epochs is None:
    raise ValueError("the balanced sampler needs a number of epochs")
  for name, value, least in (("read_threads", read_threads, 1),
                             ("prefetch_batches", prefetch_batches, 1),
                             ("worker_buffer_batches", worker_buffer_batches, 1),
                             ("worker_count", worker_count, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"{name}={value!r}; expected an integer >= {least}")
  if not images and partners:
    raise ValueError("partners are images: make_dataset(images=False) has none")
  if sixteen_bit not in ("scale", "clip"):
    raise ValueError(f"sixteen_bit={sixteen_bit!r}; expected 'scale' or 'clip'")
  if process_index is None or process_count is None:
    import jax

    process_index, process_count = jax.process_index(), jax.process_count()
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
  local_batch = batch_size // process_count
  spec = transforms.parse(transform).spec
  if degradation:
    spec = "|".join(s for s in (f"degrade({int(degradation)})", spec) if s)

  shard_paths, rest = dataset.shard_paths, spec
  cached = cache_lib.find(dataset, spec, cache) if images else None
  if cached is not None:
    shard_paths, rest = cached.shard_paths, cached.remaining(spec)
  positions = np.asarray(positions, np.int64)
  if len(positions) == 0:
    raise ValueError("the split is empty")
  prepare = Prepare(transforms.parse(rest), labels, semantic_ids(dataset), cached is not None,
                    sixteen_bit, family_levels(dataset), seed=seed, partners=int(partners),
                    partner_pool=np.asarray(positions if partner_pool is None else partner_pool,
                                            np.int64),
                    shard_paths=tuple(shard_paths))
  mask = np.ones(len(positions), bool)
  if not train:
    pad = -len(positions) % batch_size
    positions = np.concatenate([positions, np.repeat(positions[:1], pad)])
    mask = np.concatenate([mask, np.zeros(pad, bool)])
  read_from = shard_paths if images else ()
  if sampler == "balanced":
    order = balanced_order(labels[positions], num_epochs, seed)
    ds = grain.MapDataset.source(RecordsSource(read_from, positions[order], mask[order]))
    ds = ds.seed(seed)
  else:
    ds = grain.MapDataset.source(RecordsSource(read_from, positions, mask))
    ds = ds.seed(seed)
    if train:
      ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
  ds = ds[process_index::process_count]
  # Training draws from grain's per-element generators; evaluation seeds its own per record.
  random = train and (prepare.transform.is_random or prepare.partners)
  ds = ds.random_map(prepare) if random else ds.map(prepare)
  # Batching before the iterator keeps each batch one element, the same with or without workers;
  # the read-ahead below is therefore counted in batches.
  ds = ds.batch(local_batch, drop_remainder=train, batch_fn=Stack(transforms.parse(spec).spec))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch_batches))
  if worker_count > 0:
    from absl import flags

    # grain's workers read its absl flags and raise if they were never parsed (as in a script or
    # notebook not run under absl.app.run); grain 0.2.18 has no released fix.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_batches))
  return it


def close(iterator) -> None:
  """Stops an iterator's worker processes and threads now (grain would on garbage collection)."""
  if iterator is not None and hasattr(iterator, "close"):
    try:
      iterator.close()
    except Exception:  # noqa: BLE001 - closing after a failure must not hide that failure
      pass


def reading_options(input_config) -> dict[str, Any]:
  """make_dataset's reading keywords from a run config's `input` section."""
  return {
      "cache": input_config.get("cache") or None,
      "worker_count": int(input_config.get("worker_count", 0)),
      "read_threads": int(input_config.get("read_threads", READ_THREADS)),
      "prefetch_batches": int(input_config.get("prefetch_batches", PREFETCH_BATCHES)),
      "worker_buffer_batches": int(input_config.get("worker_buffer_batches",
                                                    WORKER_BUFFER_BATCHES)),
      "sixteen_bit": input_config.get("sixteen_bit", "scale"),
  }


def steps_per_epoch(num_examples: int, batch_size: int, train: bool) -> int:
  """Steps that one epoch of make_dataset yields (training drops the last partial batch)."""
  return num_examples // batch_size if train else -(-num_examples // batch_size)
