"""Input pipeline throughput: the obvious per-file PyTorch way vs our records and our cache.

  python benchmarks/input_pipeline.py [--num_images 96 --size 1024 --repeats 2]

On the same images in one run, images per second on ONE core (no worker processes anywhere) of
  (a) a PyTorch Dataset over the original PNG files: PIL open, convert RGB, resize(256),
      center-crop(256), to float tensor, normalise, in a DataLoader with num_workers=0
      (a plain loop when torch is not installed);
  (b) our grain pipeline reading the same images from the ingested ArrayRecord shards;
  (c) our grain pipeline reading the pre-resized lossless cache.
It prints the figures and the ratios (b)/(a) and (c)/(a). The images are written by the script:
photographs from scikit-image, up-sampled to --size and lightly noised so that PNG sizes and
decode costs are those of real generator outputs, not of flat or random images.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import ingest  # noqa: E402
from iab_jax.data import cache, pipeline, records  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


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


def time_per_file(paths, batch_size):
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


def time_ours(ds, spec, batch_size, use_cache):
  labels = ds.column("label").astype(np.int32)
  it = pipeline.make_dataset(ds, np.arange(len(ds)), labels, spec, batch_size=batch_size,
                             train=False, cache="auto" if use_cache else None,
                             process_index=0, process_count=1)
  start = time.perf_counter()
  n = sum(int(b["mask"].sum()) for b in it)
  return n / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_images", type=int, default=96)
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2, help="best of this many passes")
  parser.add_argument("--workdir", default=None, help="keep the files here (default: temp)")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # grain reads with a thread pool and PIL releases the GIL while decoding: pin the process to
  # one core so that every figure is per core, not per machine.
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  work = args.workdir or tempfile.mkdtemp(prefix="iab_bench_")
  try:
    src, data = os.path.join(work, "src"), os.path.join(work, "data")
    t = time.perf_counter()
    paths = make_images(src, args.num_images, args.size)
    mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 2**20
    print(f"{len(paths)} PNG images {args.size}x{args.size}, {mb:.2f} MiB each "
          f"({time.perf_counter() - t:.0f} s to write)")
    if not os.path.exists(os.path.join(data, records.DATASET_JSON)):
      t = time.perf_counter()
      ingest.run_worker(src, data, layout="folders", jobs=1, quiet=True)
      ingest.merge(data, quiet=True)
      print(f"ingest (full decode check, sha256, shard write) on 1 core: "
            f"{len(paths) / (time.perf_counter() - t):.1f} images/s")
    ds = records.Dataset(data)
    t = time.perf_counter()
    cache.build(ds, "resize(256)|central_crop(256)", jobs=1, quiet=True)
    print(f"cache built once in {time.perf_counter() - t:.1f} s on 1 core")
    spec = "resize(256)|central_crop(256)|normalize('imagenet')"
    paths = [os.path.join(src, k) for k in ds.column("key")]  # same images, same order
    a, how = max((time_per_file(paths, args.batch_size) for _ in range(args.repeats)),
                 key=lambda r: r[0])
    b = max(time_ours(ds, spec, args.batch_size, False) for _ in range(args.repeats))
    c = max(time_ours(ds, spec, args.batch_size, True) for _ in range(args.repeats))
    print(f"(a) per-file PIL, {how}: {a:8.1f} images/s/core")
    print(f"(b) iab_jax grain on records:          {b:8.1f} images/s/core  ratio b/a {b / a:5.2f}")
    print(f"(c) iab_jax grain on 256^2 raw cache:  {c:8.1f} images/s/core  ratio c/a {c / a:5.2f}")
  finally:
    if not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
