"""Generates the benchmark's images with a diffusers text-to-image model, into record shards.

  python -m data_prep.generate --model SDXL --out bench/generated
      [--captions FILE|DIR] [--semantics cat,dog] [--per_class 1000] [--images_per_caption 2]
      [--num_shards N --shard_index I] [--batch_size 2] [--png] [--device cuda:0]
  python -m data_prep.generate --merge --out bench/generated
  python -m data_prep.generate --list

Paper §3.3: every caption (1000 per semantic class, the authors' published captions by default)
is rendered twice by every open-source model, with the paper's negative prompt and Table 5
parameters (data_prep/generation_models.py). Image k of caption P of class S gets the seed
`seed_for(model, "S/pP", k)`, a hash of the three, drawn on a CPU generator: an image's starting
noise is the same whoever renders it, on however many processes. Rerunning with the same batch
size reproduces the PNG bit for bit on the same hardware; another batch size can round a pixel
differently (batched kernels; one level in a few thousand pixels on CPU). Files are named `{model}_{S}_p{P}_i{k}.png`, which the
official selection rules (`*_p{P}_i{K}.png`) and our ingest read back to caption id `S/pP`.

Work is cut into chunks of --chunk_size captions; chunk c belongs to process c % N. Each image is
written as a PNG the moment it exists (atomically), so a killed job loses at most the batch in
flight: a rerun generates only the images without a file. A finished chunk is packed into one
ArrayRecord shard (the PNG bytes, unchanged, with the full metadata: generator, semantic, caption
id and text, seed, every sampling parameter, library versions) and a chunk JSON; its PNGs are then
deleted unless --png asks to keep them (they form the official folder tree under OUT/png/).

N processes can be N separate jobs (`--num_shards N --shard_index I`) or one launch of torchrun /
accelerate / Slurm (the index and count are then read from RANK/WORLD_SIZE or SLURM_PROCID/
SLURM_NTASKS, and each process takes the GPU LOCAL_RANK). They write disjoint files under one OUT;
jobs on machines without a shared disk copy their OUT folders into one (nothing collides).
Several models can share one OUT. `--merge` checks that every chunk of every model is there and
writes dataset.json and index.parquet; the last process to finish does it by itself.

Commercial models are API-only and Janus-Pro / Infinity-2B have no diffusers pipeline: generate
their images with their own tools, name them `*_p{P}_i{K}.png` in the official folder tree and
bring them in with `python -m data_prep.ingest`; `python -m data_prep.merge` joins datasets.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import io
import json
import os
import sys
import time
from typing import Any, Sequence

from data_prep import captions as captions_lib
from data_prep import generation_models, ingest
from iab_jax.data import generators, records

GENERATE_DIR = "generate"
PNG_DIR = "png"


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to generate."""

  caption: captions_lib.Caption
  k: int  # image index within its caption
  seed: int
  filename: str


def seed_for(model: str, caption_id: str, k: int, base: int = 0) -> int:
  """The seed of image k of a caption: stable across runs, machines, batch sizes and shards."""
  digest = hashlib.sha256(f"{base}|{model}|{caption_id}|{k}".encode()).digest()
  return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def file_name(model: str, caption: captions_lib.Caption, k: int) -> str:
  return f"{model}_{caption.semantic}_p{caption.index}_i{k}.png"


def make_items(model: str, caps: Sequence[captions_lib.Caption], images_per_caption: int,
               seed: int) -> list[Item]:
  return [Item(c, k, seed_for(model, c.caption_id, k, seed), file_name(model, c, k))
          for c in caps for k in range(images_per_caption)]


# ---------------------------------------------------------------------------------------------
# Settings: the registry entry with the command line's overrides, and the plan they make.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides the pixels of a run (stored in its plan; a rerun must match)."""

  model: str
  pipeline: str
  model_id: str
  steps: int
  guidance: float
  width: int
  height: int
  dtype: str
  negative_prompt: str  # "" when not passed
  call_kwargs: dict[str, Any]
  images_per_caption: int
  seed: int


def settings_from_args(spec: generation_models.GenerationModel, args) -> Settings:
  import inspect

  import diffusers

  size = args.size or spec.size
  call_kwargs = dict(spec.call_kwargs)
  accepted = inspect.signature(getattr(diffusers, spec.pipeline).__call__).parameters
  if size != spec.size and "use_resolution_binning" in accepted:
    # Binning renders at the nearest trained aspect bucket and resizes to the size asked; at the
    # paper's native sizes it is a no-op, elsewhere it would resample the model's own pixels.
    call_kwargs["use_resolution_binning"] = False
  negative = ""
  if spec.negative_prompt and not args.no_negative_prompt:
    negative = args.negative_prompt or generation_models.NEGATIVE_PROMPT
  return Settings(
      model=spec.name, pipeline=spec.pipeline, model_id=args.model_id or spec.model_id,
      steps=args.steps or spec.steps,
      guidance=spec.guidance if args.guidance is None else args.guidance,
      width=size, height=size, dtype=args.dtype or spec.dtype, negative_prompt=negative,
      call_kwargs=call_kwargs, images_per_caption=args.images_per_caption, seed=args.seed)


def captions_fingerprint(caps: Sequence[captions_lib.Caption]) -> str:
  lines = "\n".join(f"{c.caption_id}\t{c.text}" for c in caps)
  return hashlib.sha256(lines.encode()).hexdigest()


def _paths(out: str, model: str) -> dict[str, str]:
  base = os.path.join(out, GENERATE_DIR, model)
  return {"base": base, "plan": os.path.join(base, "plan.json"),
          "chunks": os.path.join(base, "chunks")}


def chunk_json(out: str, model: str, chunk: int) -> str:
  return os.path.join(_paths(out, model)["chunks"], f"chunk-{chunk:06d}.json")


def chunk_shard(out: str, model: str, chunk: int) -> str:
  return os.path.join(out, records.RECORDS_DIR, f"{model}-{chunk:06d}.array_record")


def png_path(out: str, item: Item, model: str) -> str:
  folder = generators.SEMANTICS[item.caption.semantic][0]
  return os.path.join(out, PNG_DIR, model, folder, item.filename)


def make_plan(out: str, settings: Settings, caps: Sequence[captions_lib.Caption],
              chunk_size: int, captions_source: str) -> dict[str, Any]:
  """The run's plan; the first process stores it, later ones (and reruns) must agree with it."""
  plan = {
      "settings": dataclasses.asdict(settings),
      "chunk_size": chunk_size,
      "num_captions": len(caps),
      "num_chunks": -(-len(caps) // chunk_size),
      "num_images": len(caps) * settings.images_per_caption,
      "semantics": sorted({c.semantic for c in caps}, key=generators.SEMANTIC_ORDER.index),
      "captions_fingerprint": captions_fingerprint(caps),
      "captions_source": captions_source,
  }
  path = _paths(out, settings.model)["plan"]
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    differ = [k for k in ("settings", "chunk_size", "captions_fingerprint")
              if stored[k] != plan[k]]
    if differ:
      detail = "; ".join(_differences(stored[k], plan[k], k) for k in differ)
      raise SystemExit(f"error: {out} already holds a {settings.model} run with other settings "
                       f"({detail}). Rerun with the same settings to resume, or use a new --out.")
    return stored
  ingest.atomic_json(path, plan, indent=1)
  return plan


def _differences(old, new, name: str) -> str:
  if isinstance(old, dict) and isinstance(new, dict):
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{name}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
                     for k in keys if old.get(k) != new.get(k))
  if name == "captions_fingerprint":
    return "the captions differ (other file, classes, --per_class or pool)"
  return f"{name}: {old!r} -> {new!r}"


# ---------------------------------------------------------------------------------------------
# The diffusers side.
# ---------------------------------------------------------------------------------------------
def pick_device(device: str) -> str:
  import torch

  if device != "auto":
    return device
  if torch.cuda.is_available():
    return f"cuda:{int(os.environ.get('LOCAL_RANK', os.environ.get('SLURM_LOCALID', 0)))}"
  return "cpu"


def load_pipeline(spec: generation_models.GenerationModel, settings: Settings, *,
                  device: str, cpu_offload: bool, model_path: str | None = None,
                  component_paths: dict[str, str] | None = None, variant: str | None = None):
  """Loads the pipeline from the hub id (or a local copy) in the run's dtype, on its device."""
  import diffusers
  import torch
  import transformers

  dtype = getattr(torch, settings.dtype)
  kwargs: dict[str, Any] = {"dtype": dtype, **dict(spec.load_kwargs)}
  if variant:
    kwargs["variant"] = variant
  for comp in spec.components:
    source = (component_paths or {}).get(comp.name, comp.model_id)
    extra = dict(comp.kwargs)
    if comp.with_dtype:
      extra["dtype"] = dtype
    kwargs[comp.name] = getattr(transformers, comp.cls).from_pretrained(source, **extra)
  pipe = getattr(diffusers, spec.pipeline).from_pretrained(model_path or settings.model_id,
                                                           **kwargs)
  if cpu_offload and device.startswith("cuda"):
    pipe.enable_model_cpu_offload(gpu_id=torch.device(device).index or 0)
  else:
    pipe.to(device)
  pipe.set_progress_bar_config(disable=True)
  return pipe


def call_kwargs(pipe, settings: Settings, batch: Sequence[Item]) -> dict[str, Any]:
  """The pipeline call for one batch: one prompt and one seeded generator per image."""
  import inspect

  import torch

  accepted = inspect.signature(type(pipe).__call__).parameters
  kwargs = dict(
      prompt=[item.caption.text for item in batch], num_images_per_prompt=1,
      num_inference_steps=settings.steps, guidance_scale=settings.guidance,
      height=settings.height, width=settings.width, output_type="pil",
      # CPU generators: the starting noise is the same on any GPU model or count.
      generator=[torch.Generator("cpu").manual_seed(item.seed) for item in batch],
      **settings.call_kwargs)
  if settings.negative_prompt:
    kwargs["negative_prompt"] = [settings.negative_prompt] * len(batch)
  unknown = [k for k in kwargs if k not in accepted]
  if unknown:
    raise ValueError(f"{type(pipe).__name__} does not take {unknown}")
  return kwargs


def render(pipe, settings: Settings, batch: Sequence[Item]) -> list[tuple[bytes, tuple[int, int]]]:
  """PNG bytes and size of the batch's images, in order (PIL's lossless PNG, as the official code
  saves)."""
  images = pipe(**call_kwargs(pipe, settings, batch)).images
  if len(images) != len(batch):
    raise RuntimeError(f"pipeline returned {len(images)} images for {len(batch)} prompts")
  out = []
  for image in images:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    out.append((buf.getvalue(), image.size))
  return out


# ---------------------------------------------------------------------------------------------
# Chunks.
# ---------------------------------------------------------------------------------------------
def _write_png(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _read_png(path: str) -> tuple[bytes, tuple[int, int]] | None:
  """The file's bytes and size, or None (and the file removed) when it does not decode."""
  from PIL import Image

  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      return data, img.size
  except Exception as e:  # unreadable staging file: drop it, the chunk regenerates the image
    print(f"warning: {path} does not decode ({type(e).__name__}: {e}); regenerating it",
          file=sys.stderr)
    os.remove(path)
    return None


def record_for(item: Item, data: bytes, size: tuple[int, int], settings: Settings,
               provenance: dict[str, Any]) -> records.ImageRecord:
  model, semantic = settings.model, item.caption.semantic
  extra = {
      "seed": item.seed, "image_index": item.k, "model_id": settings.model_id,
      "pipeline": settings.pipeline, "steps": settings.steps, "guidance": settings.guidance,
      "width": settings.width, "height": settings.height, "dtype": settings.dtype,
      "negative_prompt": settings.negative_prompt, "call_kwargs": settings.call_kwargs,
      "real_image": item.caption.image_path, "file_size": len(data), "mode": "RGB",
      **provenance,
  }
  return records.ImageRecord(
      image=data, key=f"{model}/{semantic}/{item.filename}", generator=model, label=-1,
      levels=generators.family_levels(model), semantic=semantic,
      source=generators.SEMANTICS[semantic][1], width=size[0], height=size[1], format="PNG",
      sha256=records.sha256_bytes(data), caption_id=item.caption.caption_id,
      caption=item.caption.text, filename=item.filename, extra=extra)


def run_chunk(out: str, chunk: int, items: Sequence[Item], settings: Settings, get_pipe,
              batch_size: int, keep_png: bool, progress, provenance: dict[str, Any]) -> dict:
  """Generates the chunk's missing images, then packs the chunk into its shard and JSON."""
  model = settings.model
  fresh: dict[str, tuple[bytes, tuple[int, int]]] = {}  # rendered here: no need to read back
  for _ in range(2):  # a second pass regenerates files that failed to decode when packing
    missing = [it for it in items if not os.path.exists(png_path(out, it, model))]
    for start in range(0, len(missing), batch_size):
      batch = missing[start:start + batch_size]
      for item, (data, size) in zip(batch, render(get_pipe(), settings, batch)):
        _write_png(png_path(out, item, model), data)
        fresh[item.filename] = (data, size)
      progress.update(len(batch))
    # Files staged by an earlier, killed run are read back and checked to decode.
    loaded = [fresh.get(it.filename) or _read_png(png_path(out, it, model)) for it in items]
    if all(loaded):
      break
  else:
    raise RuntimeError(f"chunk {chunk} of {model}: images still fail to decode after regenerating")
  with records.ShardWriter(chunk_shard(out, model, chunk)) as writer:
    for item, (data, size) in zip(items, loaded):
      writer.write(record_for(item, data, size, settings, provenance))
  summary = {"chunk": chunk, "records": writer.metadata,
             "shard": os.path.relpath(writer.path, out),
             "shard_sha256": records.sha256_file(writer.path)}
  ingest.atomic_json(chunk_json(out, model, chunk), summary)
  if not keep_png:
    for item in items:
      os.remove(png_path(out, item, model))
    for folder in {os.path.dirname(png_path(out, item, model)) for item in items}:
      try:
        os.removedirs(folder)  # the staging folders, while empty (other chunks may still use them)
      except OSError:
        pass
  return summary


def provenance_info(device: str) -> dict[str, Any]:
  import diffusers
  import torch
  import transformers

  gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else ""
  return {"diffusers": diffusers.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__, "device": gpu or device}


def run_worker(args, spec: generation_models.GenerationModel, settings: Settings,
               caps: Sequence[captions_lib.Caption]) -> tuple[int, int]:
  """Generates this process's chunks that are not done. Returns (done, total) chunk counts."""
  from tqdm import tqdm

  plan = make_plan(args.out, settings, caps, args.chunk_size, args.captions)
  size = plan["chunk_size"]
  mine = [c for c in range(plan["num_chunks"]) if c % args.num_shards == args.shard_index]
  todo = [c for c in mine if not os.path.exists(chunk_json(args.out, spec.name, c))]
  chunk_items = {c: make_items(spec.name, caps[c * size:(c + 1) * size],
                               settings.images_per_caption, settings.seed) for c in todo}
  pending = sum(not os.path.exists(png_path(args.out, it, spec.name))
                for items in chunk_items.values() for it in items)
  print(f"generate {spec.name}: {plan['num_images']} images ({plan['num_captions']} captions x "
        f"{settings.images_per_caption}) in {plan['num_chunks']} chunks; process "
        f"{args.shard_index}/{args.num_shards} has {len(mine)} chunks, {len(todo)} to do, "
        f"{pending} images to render", flush=True)
  if not todo:
    return len(mine), plan["num_chunks"]

  device = pick_device(args.device)
  pipe = None

  def get_pipe():  # loaded on first need: packing finished chunks needs no model
    nonlocal pipe
    if pipe is None:
      started = time.time()
      pipe = load_pipeline(
          spec, settings, device=device,
          cpu_offload=spec.cpu_offload if args.cpu_offload == "paper" else args.cpu_offload == "on",
          model_path=args.model_path, component_paths=dict(args.component or []),
          variant=None if args.model_path else spec.variant)
      print(f"loaded {settings.model_id} on {device} ({settings.dtype}) in "
            f"{time.time() - started:.1f} s", flush=True)
    return pipe

  provenance = provenance_info(device)
  progress = tqdm(total=pending, unit="img", dynamic_ncols=True, file=sys.stderr,
                  disable=args.quiet or pending == 0, smoothing=0.1)
  try:
    for c in todo:
      run_chunk(args.out, c, chunk_items[c], settings, get_pipe, args.batch_size, args.png,
                progress, provenance)
  finally:
    progress.close()
  return len(mine), plan["num_chunks"]


# ---------------------------------------------------------------------------------------------
# Merge.
# ---------------------------------------------------------------------------------------------
def pending_chunks(out: str) -> dict[str, list[int]]:
  """Per model with a plan in OUT, the chunks without a finished JSON."""
  missing = {}
  for plan_path in sorted(glob.glob(os.path.join(out, GENERATE_DIR, "*", "plan.json"))):
    model = os.path.basename(os.path.dirname(plan_path))
    with open(plan_path) as f:
      plan = json.load(f)
    missing[model] = [c for c in range(plan["num_chunks"])
                      if not os.path.exists(chunk_json(out, model, c))]
  return missing


def merge(out: str, quiet: bool = False) -> dict:
  """Checks every chunk of every model in OUT and writes dataset.json and index.parquet."""
  missing = pending_chunks(out)
  if not missing:
    raise SystemExit(f"error: {out} holds no generation run ({GENERATE_DIR}/*/plan.json)")
  incomplete = {m: c for m, c in missing.items() if c}
  if incomplete:
    detail = "; ".join(f"{m}: {len(c)} chunks (first {c[:5]})" for m, c in incomplete.items())
    raise SystemExit(f"error: not every chunk is generated yet ({detail}); rerun those "
                     "processes (chunk c belongs to process c % num_shards), then --merge")
  classes = generators.class_order(missing)
  shards, hashes, metadata, runs = [], [], [], {}
  for model in classes:
    with open(_paths(out, model)["plan"]) as f:
      plan = json.load(f)
    runs[model] = {k: plan[k] for k in ("settings", "num_images", "semantics",
                                        "captions_fingerprint", "captions_source")}
    for c in range(plan["num_chunks"]):
      with open(chunk_json(out, model, c)) as f:
        summary = json.load(f)
      path = os.path.join(out, summary["shard"])
      if records.sha256_file(path) != summary["shard_sha256"]:
        raise SystemExit(f"error: {path} does not match its checksum; delete "
                         f"{chunk_json(out, model, c)} and rerun to regenerate chunk {c}")
      shards.append(path)
      hashes.append(summary["shard_sha256"])
      metadata += summary["records"]
  info = records.write_dataset_metadata(out, shards, metadata, classes, shard_sha256=hashes,
                                        generation=runs)
  if not quiet:
    counts = ", ".join(f"{m} {sum(info['counts'][m].values())}" for m in classes)
    print(f"wrote {out}: {info['num_records']} records ({counts})")
  return info


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------
def _env_int(*names: str) -> int | None:
  for name in names:
    if os.environ.get(name, "").isdigit():
      return int(os.environ[name])
  return None


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog="python -m data_prep.generate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", help="generator name (see --list)")
  parser.add_argument("--out", help="output dataset directory")
  parser.add_argument("--captions", default=captions_lib.PACKAGED_DIR,
                      help="caption file or folder (default: the authors' captions)")
  parser.add_argument("--pool", default="final", choices=captions_lib.POOLS,
                      help="COCO/ImageNet caption pool: the 1000-row files or the full ones")
  parser.add_argument("--semantics", default="", help="comma-separated classes (default: all)")
  parser.add_argument("--per_class", type=int, default=captions_lib.CAPTIONS_PER_CLASS,
                      help="captions per class, the first rows of each file")
  parser.add_argument("--images_per_caption", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0, help="base of every image's seed")
  parser.add_argument("--num_shards", type=int, default=None,
                      help="processes sharing the work (default: WORLD_SIZE/SLURM_NTASKS or 1)")
  parser.add_argument("--shard_index", type=int, default=None,
                      help="this process's index (default: RANK/SLURM_PROCID or 0)")
  parser.add_argument("--chunk_size", type=int, default=50, help="captions per shard")
  parser.add_argument("--batch_size", type=int, default=2, help="images per pipeline call")
  parser.add_argument("--png", action="store_true",
                      help="keep the PNG files (official folder tree under OUT/png)")
  parser.add_argument("--merge", action="store_true", help="only write the merged dataset")
  parser.add_argument("--list", action="store_true", help="print the model registry")
  parser.add_argument("--dry_run", action="store_true", help="print the plan, generate nothing")
  group = parser.add_argument_group("model loading and overrides (recorded in the plan)")
  group.add_argument("--model_id", help="Hugging Face id to record and load (registry default)")
  group.add_argument("--model_path", help="local copy of the pipeline to load instead of the hub")
  group.add_argument("--component", type=lambda s: tuple(s.split("=", 1)), action="append",
                     metavar="NAME=PATH", help="local copy of a separately loaded component")
  group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
  group.add_argument("--dtype", choices=generation_models.DTYPES, help="registry default")
  group.add_argument("--cpu_offload", default="paper", choices=["paper", "on", "off"],
                     help="model CPU offload: as Table 5 (paper), always, never")
  group.add_argument("--steps", type=int, help="override Table 5's steps")
  group.add_argument("--guidance", type=float, help="override Table 5's guidance scale")
  group.add_argument("--size", type=int, help="override Table 5's width = height")
  group.add_argument("--negative_prompt", help="replace the paper's negative prompt")
  group.add_argument("--no_negative_prompt", action="store_true")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  if args.list:
    return args
  if not args.out:
    parser.error("--out is required")
  if args.merge:
    return args
  if not args.model:
    parser.error("--model is required (see --list)")
  args.num_shards = args.num_shards or _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
  if args.shard_index is None:
    args.shard_index = _env_int("RANK", "SLURM_PROCID") or 0
  if not 0 <= args.shard_index < args.num_shards:
    parser.error(f"--shard_index must be in [0, {args.num_shards}); got {args.shard_index}")
  for name in ("chunk_size", "batch_size", "images_per_caption", "per_class"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
  if args.images_per_caption > 4:
    parser.error("--images_per_caption above 4 breaks the official K <= 3 naming rule")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.list:
    print(generation_models.table())
    return 0
  if args.merge:
    merge(args.out, args.quiet)
    return 0
  try:
    spec = generation_models.get(args.model)
    semantics = [s for s in args.semantics.split(",") if s] or None
    by_class = captions_lib.load(args.captions, semantics, args.pool, args.per_class)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  caps = [c for class_caps in by_class.values() for c in class_caps]
  too_far = [c.caption_id for c in caps if c.index >= captions_lib.CAPTIONS_PER_CLASS]
  if too_far:
    print(f"warning: {len(too_far)} captions have P >= 1000 (e.g. {too_far[0]}); the official "
          "selection rules leave such files out", file=sys.stderr)
  settings = settings_from_args(spec, args)
  if args.dry_run:
    print(json.dumps(dataclasses.asdict(settings), indent=1))
    print(f"{len(caps)} captions x {settings.images_per_caption} images = "
          f"{len(caps) * settings.images_per_caption} images, classes "
          f"{', '.join(by_class)}")
    return 0
  started = time.time()
  run_worker(args, spec, settings, caps)
  if not any(pending_chunks(args.out).values()):
    merge(args.out, args.quiet)
  elif not args.quiet:
    print(f"process {args.shard_index} done in {time.time() - started:.1f} s; the dataset is "
          "written once every process has finished (or run --merge)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
