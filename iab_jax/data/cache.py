"""A lossless pre-resized cache of a dataset, built once, read by training.

Decoding a 1024x1024 PNG costs ~20 ms of a core; an accelerator consumes thousands of images a
second. The cache stores, for every record in dataset order, the uint8 result of a deterministic
transform prefix such as "resize(256)|central_crop(256)" (raw pixels, or PNG to save disk), in
shards that mirror the dataset's. A pipeline whose transform begins with the cache's ops reads the
cache and runs only the remaining ops (random crop, flip, normalise). Degraded evaluation never uses
it: degradations act on the originals.

Layout: <data>/cache/<name>/cache.json + part-XXXXX.array_record, one per dataset shard. Building
is resumable: a shard appears under its name only when complete, and a rerun skips those present.

`worker_pool` is the process pool of the cache build and of data_prep.ingest: spawned, not forked
(a fork copies whatever threads JAX or grain started in the parent, and os.fork() warns about it),
and its processes exit when their parent dies, even by SIGKILL.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing
import os
import re
import signal
import struct
import sys
import threading
import time

import numpy as np

from iab_jax.data import records, transforms

CACHE_DIR = "cache"
CACHE_JSON = "cache.json"
DEFAULT_SPEC = "resize(256)|central_crop(256)"
_MAGIC = b"IABC"
_HEADER = struct.Struct("<4sBHHH")
CODECS = {"raw": 0, "png": 1}


def encode(image: np.ndarray, codec: str = "raw") -> bytes:
  image = np.ascontiguousarray(image, np.uint8)
  h, w, c = image.shape
  header = _HEADER.pack(_MAGIC, CODECS[codec], h, w, c)
  if codec == "raw":
    return header + image.tobytes()
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "PNG", compress_level=1)
  return header + buf.getvalue()


def decode(data: bytes) -> np.ndarray:
  magic, codec, h, w, c = _HEADER.unpack_from(data)
  if magic != _MAGIC:
    raise ValueError(f"not an iab_jax cache record (magic {magic!r})")
  body = memoryview(data)[_HEADER.size:]
  if codec == CODECS["raw"]:
    return np.frombuffer(body, np.uint8).reshape(h, w, c)
  from PIL import Image

  return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def cache_name(spec: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_") or "decoded"


class Cache:
  """A built cache: its spec, the dataset fingerprint it was built from, and its shards."""

  def __init__(self, root: str):
    with open(os.path.join(root, CACHE_JSON)) as f:
      self.info = json.load(f)
    self.root = root
    self.spec = self.info["spec"]
    self.shard_paths = [os.path.join(root, s["path"]) for s in self.info["shards"]]

  def remaining(self, spec: str) -> str | None:
    """The ops of `spec` left after this cache's ops, or None if the cache cannot serve it."""
    return transforms.strip_prefix(spec, self.spec)


def check_spec(spec: str) -> str:
  t = transforms.parse(spec)
  if t.is_random or t.has_degradation:
    raise ValueError(f"a cache needs a deterministic, degradation-free transform; got {spec!r}")
  return t.spec


def find(dataset: records.Dataset, spec: str, cache: str | None) -> Cache | None:
  """The cache to read for `spec`: "auto" picks a matching built one, a path must match."""
  if cache is None or transforms.parse(spec).has_degradation:
    if cache not in (None, "auto"):
      raise ValueError(f"cache {cache} cannot serve {spec!r}: degradations need the originals")
    return None
  if cache != "auto":
    found = Cache(cache)
    if found.info["fingerprint"] != dataset.info["fingerprint"]:
      raise ValueError(f"cache {cache} was built from another dataset (fingerprint "
                       f"{found.info['fingerprint'][:12]} != {dataset.info['fingerprint'][:12]})")
    if found.remaining(spec) is None:
      raise ValueError(f"cache {cache} holds {found.spec!r}, which does not begin {spec!r}")
    return found
  base = os.path.join(dataset.root, CACHE_DIR)
  if not os.path.isdir(base):
    return None
  best = None
  for name in sorted(os.listdir(base)):
    if not os.path.exists(os.path.join(base, name, CACHE_JSON)):
      continue
    found = Cache(os.path.join(base, name))
    if (found.info["fingerprint"] == dataset.info["fingerprint"]
        and found.remaining(spec) is not None
        and (best is None or len(found.spec) > len(best.spec))):
      best = found  # the longest matching prefix leaves the least work per step
  return best


PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_pool(jobs: int, initializer=None, initargs=()) -> concurrent.futures.ProcessPoolExecutor:
  """A pool of `jobs` spawned processes that exit as soon as this process dies.

  Each process asks Linux for SIGKILL when its parent goes (prctl PR_SET_PDEATHSIG) and, on any
  platform, watches os.getppid() from a thread every PARENT_POLL_SECONDS. Without this, workers
  of a killed parent wait on their task queue forever (they hold its write end themselves). The
  kernel sends the signal when the *thread* that started the process ends, so submit work from
  a thread that lives as long as the pool (the tools here use the main thread); the watchdog
  covers the rest.
  """
  return concurrent.futures.ProcessPoolExecutor(
      jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
      initargs=(os.getpid(), initializer, tuple(initargs)))


def _start_worker(parent: int, initializer, initargs) -> None:
  """Pool process start-up: die with the parent, then the caller's initializer."""
  if sys.platform.startswith("linux"):
    try:
      import ctypes

      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
      pass  # no prctl here: the watchdog below still ends the process
  if os.getppid() != parent:  # the parent died before the request took effect
    os._exit(1)
  threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
  if initializer is not None:
    initializer(*initargs)


def _watch_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(PARENT_POLL_SECONDS)
  os._exit(1)


def _prepare(raw):
  return encode(np.asarray(_prepare.transform(records.decode(raw))), _prepare.codec)


def _init(spec, codec):
  """Per pool process: parse the transform once, not once per image."""
  _prepare.transform, _prepare.codec = transforms.parse(spec), codec


def build(dataset: records.Dataset, spec: str = DEFAULT_SPEC, codec: str = "raw",
          out: str | None = None, jobs: int = 0, quiet: bool = False) -> Cache:
  """Builds (or finishes building) the cache of `spec` for every record of the dataset."""
  from array_record.python import array_record_module
  from tqdm import tqdm

  spec = check_spec(spec)
  if codec not in CODECS:
    raise ValueError(f"codec must be one of {sorted(CODECS)}; got {codec!r}")
  out = out or os.path.join(dataset.root, CACHE_DIR, cache_name(spec))
  os.makedirs(out, exist_ok=True)
  jobs = jobs or os.cpu_count() or 1
  pool = worker_pool(jobs, initializer=_init, initargs=(spec, codec))
  shards, offset = [], 0
  progress = tqdm(total=len(dataset), unit="img", disable=quiet, desc="cache")
  try:
    for i, shard in enumerate(dataset.info["shards"]):
      path = os.path.join(out, f"part-{i:05d}.array_record")
      n = shard["num_records"]
      if not os.path.exists(path):
        writer = array_record_module.ArrayRecordWriter(path + ".tmp", records.WRITER_OPTIONS)
        tasks = (dataset.raw(p) for p in range(offset, offset + n))
        for data in pool.map(_prepare, tasks, chunksize=8):
          writer.write(data)
          progress.update(1)
        writer.close()
        os.replace(path + ".tmp", path)
      else:
        progress.update(n)
      shards.append({"path": os.path.basename(path), "num_records": n,
                     "sha256": records.sha256_file(path)})
      offset += n
  finally:
    progress.close()
    pool.shutdown()
  info = {"spec": spec, "codec": codec, "fingerprint": dataset.info["fingerprint"],
          "num_records": len(dataset), "shards": shards}
  with open(os.path.join(out, CACHE_JSON + ".tmp"), "w") as f:
    json.dump(info, f, indent=1)
  os.replace(os.path.join(out, CACHE_JSON + ".tmp"), os.path.join(out, CACHE_JSON))
  return Cache(out)
