"""Generation images/s: data_prep.generate against the obvious diffusers loop, per model.

The obvious way (what the official construction scripts do) calls the pipeline once per caption
for its two images and saves each with `image.save(path)`. Ours renders the same images (same
pipeline, seeds and batch) and also stages each PNG atomically, hashes it and packs the chunk into
an ArrayRecord shard with its metadata. Both sides share one loaded pipeline, warmed up first;
loading time is not counted. The ratio is ours / obvious (1.0 = no overhead).

  python benchmarks/generation.py                          # CPU: tiny random pipelines, 64²
  python benchmarks/generation.py --models SD1_5,SDXL      # GPU: real weights (hub cache or
      --captions 8 --model_root /models                    #   /models/NAME), Table 5 settings

Without CUDA it runs the tiny pipelines of data_prep.tiny_pipelines (their figures measure the
machinery, not a real model). Needs the `generate` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import captions as captions_lib  # noqa: E402
from data_prep import generate, generation_models, tiny_pipelines  # noqa: E402


def obvious_loop(pipe, settings, items, folder: str) -> None:
  """One pipeline call per caption (its images in one batch), then PIL's save per image."""
  for start in range(0, len(items), settings.images_per_caption):
    batch = items[start:start + settings.images_per_caption]
    images = pipe(**generate.call_kwargs(pipe, settings, batch)).images
    for item, image in zip(batch, images):
      image.save(os.path.join(folder, item.filename))


def ours(pipe, settings, items, out: str, chunk_size: int) -> None:
  from tqdm import tqdm

  progress = tqdm(disable=True)
  per_chunk = chunk_size * settings.images_per_caption
  for c, start in enumerate(range(0, len(items), per_chunk)):
    generate.run_chunk(out, c, items[start:start + per_chunk], settings, lambda: pipe,
                       settings.images_per_caption, False, progress, {"device": "bench"})


def bench_model(name: str, args, tmp: str) -> tuple[float, float]:
  import torch

  spec = generation_models.get(name)
  cuda = torch.cuda.is_available() and not args.tiny
  model_path = None
  if not cuda:
    model_path = tiny_pipelines.build(name, os.path.join(tmp, "tiny", name))
  elif args.model_root:
    model_path = os.path.join(args.model_root, name)
  overrides = argparse.Namespace(
      size=args.size or (None if cuda else 64), steps=args.steps or (None if cuda else 4),
      guidance=None, dtype=None if cuda else "float32", negative_prompt=None,
      no_negative_prompt=False, model_id=None, images_per_caption=2, seed=0)
  settings = generate.settings_from_args(spec, overrides)
  device = "cuda:0" if cuda else "cpu"
  pipe = generate.load_pipeline(spec, settings, device=device, cpu_offload=False,
                                model_path=model_path,
                                variant=None if model_path else spec.variant)
  caps = captions_lib.load(captions_lib.PACKAGED_DIR, ["cat"], limit=args.captions + 1)["cat"]
  warm, timed = generate.make_items(name, caps[:1], 2, 0), generate.make_items(name, caps[1:], 2, 0)
  obvious_loop(pipe, settings, warm, tmp)

  def timed_run(fn, *fn_args):
    if cuda:
      torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*fn_args)
    if cuda:
      torch.cuda.synchronize()
    return len(timed) / (time.perf_counter() - start)

  rates = {"obvious": [], "ours": []}
  for r in range(args.repeats):  # alternated, so drift in machine load hits both alike
    folder = os.path.join(tmp, f"{name}-obvious-{r}")
    os.makedirs(folder)
    rates["obvious"].append(timed_run(obvious_loop, pipe, settings, timed, folder))
    rates["ours"].append(timed_run(ours, pipe, settings, timed, os.path.join(tmp, f"{name}-{r}"),
                                   args.chunk_size))
  del pipe
  return max(rates["obvious"]), max(rates["ours"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=",".join(tiny_pipelines.BUILDERS))
  parser.add_argument("--captions", type=int, default=8, help="timed captions (2 images each)")
  parser.add_argument("--chunk_size", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--size", type=int, help="default: Table 5 on GPU, 64 on CPU")
  parser.add_argument("--steps", type=int, help="default: Table 5 on GPU, 4 on CPU")
  parser.add_argument("--tiny", action="store_true", help="tiny pipelines even on a GPU")
  parser.add_argument("--model_root", help="folder of local pipeline copies, one per model name")
  args = parser.parse_args()
  import torch

  where = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else (
      f"CPU ({torch.get_num_threads()} threads), tiny random pipelines")
  print(f"generation images/s on {where}; {args.captions} captions x 2 images, best of "
        f"{args.repeats}")
  print(f"{'model':16s} {'obvious loop':>13s} {'ours':>8s} {'ours/obvious':>13s}")
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      obvious, mine = bench_model(name, args, tmp)
      print(f"{name:16s} {obvious:13.2f} {mine:8.2f} {mine / obvious:12.2f}x", flush=True)


if __name__ == "__main__":
  main()
