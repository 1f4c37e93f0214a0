"""Input pipeline: throughput and peak memory, the obvious per-file PyTorch way vs our records.

  python benchmarks/input_pipeline.py [--num_images 96 --size 1024 --repeats 2]

On the same images in one run, each in a fresh process (so that its peak memory is its own):

Throughput on ONE core (no worker processes anywhere), images/s and peak RSS of
  (a) a PyTorch Dataset over the original PNG files: PIL open, convert RGB, resize(256),
      center-crop(256), to float tensor, normalise, in a DataLoader with num_workers=0
      (a plain loop when torch is not installed);
  (b) our grain pipeline reading the same images from the ingested ArrayRecord shards;
  (c) our grain pipeline reading the pre-resized lossless cache.

Memory of a training stream: 256x256 float32 batches of 32 (25 MiB each) from the cache, read
by a consumer that takes --step_seconds per batch, as a training step slower than the input
does (the case where read-ahead piles up), on all cores, for --stream_steps steps:
  (d) our defaults (iab_jax.data.pipeline: 2 read threads, 2 batches read ahead);
  (e) grain's default read-ahead on the same batched dataset (16 threads, 500 elements, i.e.
      500 batches), what iab_jax did before: stopped once it passes --max_rss_gb;
  (f) our defaults with 2 worker processes (each worker holds its own read-ahead).
Peak RSS is the sum over the process and its children, sampled every 50 ms from /proc.

The images are written by the script: photographs from scikit-image, up-sampled to --size and
lightly noised so that PNG sizes and decode costs are those of real generator outputs.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SPEC = "resize(256)|central_crop(256)|normalize('imagenet')"
STREAM_SPEC = "resize(256)|central_crop(256)|flip_lr|normalize('imagenet')"
MIB = 2 ** 20


def make_images(root: str, n: int, size: int) -> list[str]:
  import skimage.data

  photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
            skimage.data.rocket()]
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    base = Image.fromarray(photos[i % len(photos)]).resize((size, size), Image.BICUBIC)
    arr = np.asarray(base, np.int16) + rng.integers(-4, 5, (size, size, 3))
    path = os.path.join(root, ["SDXL", "FLUX", "real"][i % 3], f"img_p{i}_i0.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    paths.append(path)
  return paths


# ------------------------------------------------------------------------------------------
# Peak memory of this process and its children.


def _tree_rss_bytes(root_pid: int) -> int:
  """RSS summed over root_pid and every descendant, from /proc."""
  parents = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
        parents[int(name)] = int(fields[1])
      except (OSError, IndexError, ValueError):
        continue
  tree, frontier = {root_pid}, [root_pid]
  while frontier:
    pid = frontier.pop()
    for child, parent in parents.items():
      if parent == pid and child not in tree:
        tree.add(child)
        frontier.append(child)
  total = 0
  for pid in tree:
    try:
      with open(f"/proc/{pid}/statm") as f:
        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
      continue
  return total


class PeakRss:
  """Samples the process tree's RSS in a thread; `.peak` in bytes; `.over` once past a limit."""

  def __init__(self, limit_bytes: float = float("inf"), every: float = 0.05):
    self.peak, self.over, self._limit, self._every = 0, False, limit_bytes, every
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))
      self.over = self.peak > self._limit
      self._stop.wait(self._every)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *_):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))


# ------------------------------------------------------------------------------------------
# The measurements, each run in its own process by `main`.


def per_file_transform(path: str) -> np.ndarray:
  """What a typical PyTorch Dataset does per item (torchvision's Resize/CenterCrop on PIL)."""
  img = Image.open(path).convert("RGB")
  w, h = img.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(256 * long / short)
  img = img.resize((256, new_long) if w <= h else (new_long, 256), Image.BILINEAR)
  w, h = img.size
  top, left = int(round((h - 256) / 2.0)), int(round((w - 256) / 2.0))
  img = img.crop((left, top, left + 256, top + 256))
  return ((np.asarray(img, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def measure_per_file(paths, batch_size):
  try:
    import torch
    from torch.utils.data import DataLoader, Dataset
  except ImportError:
    start = time.perf_counter()
    for path in paths:
      per_file_transform(path)
    return len(paths) / (time.perf_counter() - start), "plain loop (torch not installed)"

  class Files(Dataset):

    def __len__(self):
      return len(paths)

    def __getitem__(self, i):
      return torch.from_numpy(per_file_transform(paths[i]))

  torch.set_num_threads(1)
  loader = DataLoader(Files(), batch_size=batch_size, num_workers=0)
  start = time.perf_counter()
  n = sum(len(b) for b in loader)
  return n / (time.perf_counter() - start), f"torch {torch.__version__} DataLoader"


def measure_ours(data, batch_size, use_cache):
  from iab_jax.data import pipeline, records

  ds = records.Dataset(data)
  labels = ds.column("label").astype(np.int32)
  it = pipeline.make_dataset(ds, np.arange(len(ds)), labels, SPEC, batch_size=batch_size,
                             train=False, cache="auto" if use_cache else None,
                             process_index=0, process_count=1)
  start = time.perf_counter()
  n = sum(int(b["mask"].sum()) for b in it)
  return n / (time.perf_counter() - start)


def measure_stream(data, batch_size, steps, step_seconds, reading, limit_bytes):
  from iab_jax.data import pipeline, records

  ds = records.Dataset(data)
  labels = ds.column("label").astype(np.int32)
  it = iter(pipeline.make_dataset(ds, np.arange(len(ds)), labels, STREAM_SPEC,
                                  batch_size=batch_size, train=True, num_epochs=None,
                                  cache="auto", process_index=0, process_count=1, **reading))
  taken = 0
  with PeakRss(limit_bytes) as rss:
    start = time.perf_counter()
    for _ in range(steps):
      next(it)
      taken += 1
      time.sleep(step_seconds)  # the training step the input waits for
      if rss.over:
        break
    seconds = time.perf_counter() - start
  pipeline.close(it)
  return {"images_per_s": taken * batch_size / seconds, "peak_rss_mb": rss.peak / MIB,
          "steps": taken, "stopped": rss.over}


def run_measurement(args) -> dict:
  name = args.measure
  if name in ("per_file", "records", "cache"):
    if hasattr(os, "sched_setaffinity"):  # per core: grain's threads and PIL would use them all
      os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with PeakRss() as rss:
      if name == "per_file":
        from iab_jax.data import records

        ds = records.Dataset(args.data)
        paths = [os.path.join(args.src, k) for k in ds.column("key")]  # same images, same order
        rate, how = max((measure_per_file(paths, args.batch_size) for _ in range(args.repeats)),
                        key=lambda r: r[0])
      else:
        rate = max(measure_ours(args.data, args.batch_size, name == "cache")
                   for _ in range(args.repeats))
        how = ""
    return {"images_per_s": rate, "peak_rss_mb": rss.peak / MIB, "how": how}
  from iab_jax.data import pipeline

  reading = {
      "defaults": {},
      "grain_defaults": {"read_threads": 16, "prefetch_batches": 500},
      "workers": {"worker_count": 2},
  }[name]
  result = measure_stream(args.data, args.batch_size, args.stream_steps, args.step_seconds,
                          reading, args.max_rss_gb * 2 ** 30)
  merged = {"read_threads": pipeline.READ_THREADS, "prefetch_batches": pipeline.PREFETCH_BATCHES,
            "worker_count": 0, "worker_buffer_batches": pipeline.WORKER_BUFFER_BATCHES,
            **reading}
  result["bound_batches"] = pipeline.buffered_batches(**merged)
  return result


def _child(args, name: str) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--measure", name, "--src", args.src,
             "--data", args.data, "--batch_size", str(args.batch_size), "--repeats",
             str(args.repeats), "--stream_steps", str(args.stream_steps), "--step_seconds",
             str(args.step_seconds), "--max_rss_gb", str(args.max_rss_gb)]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  done = subprocess.run(command, capture_output=True, text=True, env=env)
  if done.returncode:
    raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_images", type=int, default=96)
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2, help="best of this many passes")
  parser.add_argument("--stream_steps", type=int, default=60)
  parser.add_argument("--step_seconds", type=float, default=0.25)
  parser.add_argument("--max_rss_gb", type=float, default=4.0,
                      help="stop the grain-defaults stream once its RSS passes this")
  parser.add_argument("--workdir", default=None, help="keep the files here (default: temp)")
  parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--src", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.measure:
    print(json.dumps(run_measurement(args)))
    return

  from data_prep import ingest
  from iab_jax.data import cache, records

  work = args.workdir or tempfile.mkdtemp(prefix="iab_bench_")
  try:
    args.src, args.data = os.path.join(work, "src"), os.path.join(work, "data")
    t = time.perf_counter()
    paths = make_images(args.src, args.num_images, args.size)
    mb = sum(os.path.getsize(p) for p in paths) / len(paths) / MIB
    print(f"{len(paths)} PNG images {args.size}x{args.size}, {mb:.2f} MiB each "
          f"({time.perf_counter() - t:.0f} s to write)")
    if not os.path.exists(os.path.join(args.data, records.DATASET_JSON)):
      t = time.perf_counter()
      ingest.run_worker(args.src, args.data, layout="folders", jobs=1, quiet=True)
      ingest.merge(args.data, quiet=True)
      print(f"ingest (full decode check, sha256, shard write) on 1 core: "
            f"{len(paths) / (time.perf_counter() - t):.1f} images/s")
    t = time.perf_counter()
    cache.build(records.Dataset(args.data), "resize(256)|central_crop(256)", jobs=1, quiet=True)
    print(f"cache built once in {time.perf_counter() - t:.1f} s on 1 core")

    a, b, c = (_child(args, n) for n in ("per_file", "records", "cache"))
    print("throughput, one core, 1024^2 PNG -> 256^2 float32:")
    print(f"  (a) per-file PIL, {a['how']}: {a['images_per_s']:8.1f} images/s, "
          f"peak RSS {a['peak_rss_mb']:6.0f} MiB")
    for label, r in (("(b) iab_jax grain on records:", b), ("(c) iab_jax grain on the cache:", c)):
      print(f"  {label:<37}{r['images_per_s']:8.1f} images/s, peak RSS "
            f"{r['peak_rss_mb']:6.0f} MiB, ratio to (a) {r['images_per_s'] / a['images_per_s']:5.2f}")
    print(f"training stream, batch {args.batch_size} of 256^2 float32 "
          f"({args.batch_size * 256 * 256 * 3 * 4 / MIB:.0f} MiB a batch), a step every "
          f"{args.step_seconds} s, {args.stream_steps} steps, all cores:")
    for label, name in (("(d) iab_jax defaults", "defaults"),
                        ("(e) grain's default read-ahead", "grain_defaults"),
                        ("(f) iab_jax defaults, 2 workers", "workers")):
      r = _child(args, name)
      stop = (f" (stopped after {r['steps']} steps: over {args.max_rss_gb:g} GiB)"
              if r["stopped"] else "")
      print(f"  {label:<34} peak RSS {r['peak_rss_mb']:7.0f} MiB, {r['images_per_s']:6.1f} "
            f"images/s, at most ~{r['bound_batches']} batches buffered{stop}")
  finally:
    if not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
