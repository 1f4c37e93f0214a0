"""Runs a trained attributor on anyone's images: which generator made each one, and how sure.

  python -m iab_jax.attribute --workdir RUN photo.png more_images/ "shots/*.jpg"
  python -m iab_jax.attribute --workdir RUN images/ --top_k 5 --out results/mine --degradation 3

PATHs are files, folders (searched recursively for png/jpg/jpeg/webp/bmp/tiff) and glob patterns.
Every image is decoded as the benchmark decodes its records (RGB, 16-bit scaled or clipped as the
run was trained), goes through the run's evaluation transform, and is scored in fixed-size jitted
batches over all devices. A file that cannot be read (missing, not an image, truncated) is listed
with its reason and the others go on. Output: a table of each image's top-k generators on stdout,
and OUT.csv (path, then class and probability for each of the top k) and OUT.json (every class's
probability, the run, the checkpoint, the failed files) with --out OUT (default `attributions`).

From Python:

  from iab_jax.attribute import Attributor
  attributor = Attributor("runs/resnet50_standard")
  probabilities = attributor.predict(["a.png", pil_image, uint8_array])   # (N, classes)
  attributor.top_k(probabilities, k=3)                                     # [[(class, p), ...]]

The model is the run's best checkpoint by validation accuracy (`checkpoint="last"` or a step for
another); only its parameters and model state are restored.
"""

from __future__ import annotations

import concurrent.futures
import csv
import glob
import hashlib
import json
import os
import sys
from typing import Any, Iterable, Sequence

from iab_jax import console

console.quiet_libraries()

import numpy as np  # noqa: E402

from iab_jax import errors, runs  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def expand_paths(paths: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
  """(image files in the order given, sorted within folders and globs; [{path, reason}] of
  arguments that name nothing)."""
  files, missing, seen = [], [], set()

  def add(path):
    real = os.path.realpath(path)
    if real not in seen:
      seen.add(real)
      files.append(path)

  for arg in paths:
    if os.path.isdir(arg):
      found = []
      for root, dirs, names in os.walk(arg, followlinks=False):
        dirs.sort()
        found += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
      if not found:
        missing.append({"path": arg, "reason": "folder without images "
                        f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)})"})
      for f in sorted(found):
        add(f)
    elif os.path.isfile(arg):
      add(arg)
    elif glob.has_magic(arg):
      matched = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
      if not matched:
        missing.append({"path": arg, "reason": "the pattern matches no file"})
      for f in matched:
        add(f)
    else:
      missing.append({"path": arg, "reason": "no such file or folder"})
  return files, missing


def load_image(source, sixteen_bit: str = "scale"):
  """An RGB PIL image from a path, bytes, a PIL image or an HxWx3 uint8 array; ValueError with
  the reason (records.open_image's, as ingest reports them) when it is not a readable image."""
  from PIL import Image

  from iab_jax.data import records

  if isinstance(source, np.ndarray):
    if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8:
      raise ValueError(f"expected an HxWx3 uint8 array, got {source.dtype} {source.shape}")
    return Image.fromarray(np.ascontiguousarray(source))
  if isinstance(source, Image.Image):
    return records.to_rgb(source, sixteen_bit=sixteen_bit)
  try:
    if isinstance(source, (bytes, bytearray, memoryview)):
      data = bytes(source)
    else:
      with open(source, "rb") as f:
        data = f.read()
  except OSError as e:
    raise ValueError(f"unreadable ({e.strerror or e})") from None
  return records.load_rgb(records.open_image(data), sixteen_bit)


class Attributor:
  """A trained run's model, ready to score images (see the module docstring)."""

  def __init__(self, workdir: str, checkpoint: str = "best", batch_size: int | None = None,
               degradation: int = 0):
    import jax
    import jax.numpy as jnp

    from iab_jax import checkpointing, methods, sharding
    from iab_jax.data import degradations, transforms

    self.workdir = workdir
    self.config = runs.load_config(workdir)
    self.classes = runs.run_classes(workdir) or self._classes_from_manifest()
    self.method = methods.get(self.config.method)(self.config, self.classes)
    # The columns of the probabilities: the run's classes, and "unknown" where the method has a
    # reject class (an open-set run of OFA).
    self.labels = [*self.classes, "unknown"] if self.method.reject_class else list(self.classes)
    _, spec = self.method.transforms()
    self.degradation = degradations.check_level(degradation)
    if self.degradation:
      spec = f"degrade({self.degradation})|{spec}"
    self.transform = transforms.parse(spec)
    # A method that reads a frozen network's features gets them computed here, image by image,
    # each from its own transform (the cache serves datasets, not arbitrary files).
    from iab_jax import features as features_lib

    self.frozen = self.method.frozen_features()
    prefix = f"degrade({self.degradation})|" if self.degradation else ""
    self.frozen_transforms = {f.name: transforms.parse(prefix + f.transform) for f in self.frozen}
    self.sixteen_bit = self.config.input.get("sixteen_bit", "scale")
    self.mesh = sharding.make_mesh()
    self.extractors = features_lib.Extractors(self.mesh) if self.frozen else None
    devices = jax.device_count()
    batch_size = batch_size or self.config.input.eval_batch_size
    self.batch_size = -(-batch_size // devices) * devices  # a multiple of the devices

    ckpt = checkpointing.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS))
    self.step = ckpt.step_for(checkpoint)
    self.checkpoint = {"which": checkpoint, "step": int(self.step), **ckpt.meta(self.step)}
    example = self._prepare(np.full((256, 256, 3), 127, np.uint8))["image"]
    repl = sharding.replicated(self.mesh)
    self.variables = ckpt.restore_variables(self.step, lambda: self.method.init(
        jax.random.key(0), jax.tree.map(lambda x: jnp.asarray(x[None]), example),
        pretrained=False), repl)
    ckpt.close()
    method = self.method
    self._predict = jax.jit(lambda v, b: method.headline(method.predict(v, b)),
                            in_shardings=(repl, sharding.batch_sharded(self.mesh)),
                            out_shardings=repl)

  def _classes_from_manifest(self) -> list[str]:
    from iab_jax import tasks

    return tasks.load(self.config.input, tasks.parse_task(self.config.task)).classes

  def _prepare(self, image) -> dict[str, Any]:
    """{"image": the method's input, "frozen": {name: a frozen network's input}}."""
    pixels = load_image(image, self.sixteen_bit)
    # A random evaluation transform (SSP's patch draw) draws from a generator seeded by the
    # image's pixels: the same image gets the same answer every time.
    rng = np.random.default_rng([int(self.config.get("seed", 0)), *np.frombuffer(
        hashlib.sha256(np.asarray(pixels).tobytes()).digest()[:8], np.uint32).tolist()])
    return {"image": self.transform(pixels, rng),
            "frozen": {name: t(pixels, rng) for name, t in self.frozen_transforms.items()}}

  def predict(self, images: Iterable[Any]) -> np.ndarray:
    """(N, classes) probabilities of images given as paths, bytes, PIL images or uint8 arrays.

    Raises ValueError naming the first image that cannot be read; `attribute_files` reports
    such files and goes on instead.
    """
    prepared = []
    for i, image in enumerate(images):
      try:
        prepared.append(self._prepare(image))
      except ValueError as e:
        name = image if isinstance(image, (str, os.PathLike)) else f"image {i}"
        raise ValueError(f"{name}: {e}") from None
    return self.predict_prepared(prepared)

  def predict_prepared(self, prepared: Sequence[dict[str, Any]]) -> np.ndarray:
    """Probabilities of images already through the transforms (`_prepare`), in fixed-size
    batches (one compilation per image shape; the last batch is padded, the padding dropped)."""
    import jax

    from iab_jax import sharding
    from iab_jax.data import pipeline

    out = np.zeros((len(prepared), len(self.labels)), np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for i, x in enumerate(prepared):
      shapes = tuple((a.shape, a.dtype.str) for a in jax.tree.leaves(x))
      by_shape.setdefault(shapes, []).append(i)

    def stacked(arrays, pad):
      batch = pipeline.stack_tree(arrays)
      return jax.tree.map(
          lambda b: np.concatenate([b, np.repeat(b[:1], pad, axis=0)]) if pad else b, batch)

    for indices in by_shape.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        pad = self.batch_size - len(chunk)
        batch = sharding.global_batch(
            {"image": stacked([prepared[i]["image"] for i in chunk], pad)}, self.mesh)
        if self.frozen:
          batch["features"] = {}
          for spec in self.frozen:
            inputs = stacked([prepared[i]["frozen"][spec.name] for i in chunk], pad)
            inputs = sharding.global_batch({"x": inputs}, self.mesh)["x"]
            values = sharding.to_host(self.extractors(spec, inputs))
            batch["features"][spec.name] = sharding.global_batch({"f": values}, self.mesh)["f"]
        scores = sharding.to_host(self._predict(self.variables, batch))
        out[chunk] = np.asarray(scores, np.float32)[:len(chunk)]
    return out

  def top_k(self, probabilities: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
    """Per image, the k most likely classes with their probabilities, most likely first."""
    k = max(1, min(k, len(self.labels)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(self.labels[c], float(p[c])) for c in row] for row, p in zip(order, probabilities)]

  def attribute_files(self, paths: Sequence[str], k: int = 3, threads: int = 4
                      ) -> dict[str, Any]:
    """Scores every image under `paths` (files, folders, globs); unreadable ones are reported.

    Decoding runs in `threads` threads and scoring in batches, a batch at a time, so memory
    stays at a few batches whatever the number of files.
    """
    files, failed = expand_paths(paths)
    predictions = []
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
      for start in range(0, len(files), self.batch_size):
        chunk = files[start:start + self.batch_size]
        ready, names = [], []
        for path, result in zip(chunk, pool.map(self._try_prepare, chunk)):
          if isinstance(result, str):
            failed.append({"path": path, "reason": result})
          else:
            ready.append(result)
            names.append(path)
        if not ready:
          continue
        probabilities = self.predict_prepared(ready)
        for path, p, top in zip(names, probabilities, self.top_k(probabilities, k)):
          predictions.append({"path": path, "top": [{"class": c, "probability": q}
                                                    for c, q in top],
                              "probabilities": dict(zip(self.labels, map(float, p)))})
    return {"format": "iab_jax.attributions", "version": 1,
            "run": os.path.abspath(self.workdir), "method": self.config.method,
            "checkpoint": self.checkpoint, "degradation": self.degradation,
            "classes": self.labels, "predictions": predictions, "failed": failed}

  def _try_prepare(self, path: str):
    try:
      return self._prepare(path)
    except ValueError as e:
      return str(e)


def write_csv(result: dict[str, Any], path: str, k: int) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    header = ["path"]
    for i in range(1, k + 1):
      header += [f"top{i}", f"p{i}"]
    writer.writerow(header)
    for p in result["predictions"]:
      row = [p["path"]]
      for t in p["top"]:
        row += [t["class"], f"{t['probability']:.6f}"]
      writer.writerow(row)


def summary(result: dict[str, Any], limit: int = 50) -> str:
  lines = []
  width = max([len(p["path"]) for p in result["predictions"][:limit]] + [4])
  for p in result["predictions"][:limit]:
    tops = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in p["top"])
    lines.append(f"{p['path']:<{width}}  {tops}")
  if len(result["predictions"]) > limit:
    lines.append(f"... {len(result['predictions']) - limit} more in the CSV and JSON files")
  for f in result["failed"]:
    lines.append(f"skipped {f['path']}: {f['reason']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m iab_jax.attribute", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
  parser.add_argument("--workdir", required=True, help="a trained run (python -m iab_jax.main)")
  parser.add_argument("--top_k", type=int, default=3, help="classes to list per image")
  parser.add_argument("--out", default="attributions",
                      help="writes OUT.csv and OUT.json (default: ./attributions.*)")
  parser.add_argument("--checkpoint", default="best", help="best, last, or a saved step")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="images per jitted batch (default: the run's eval batch size)")
  parser.add_argument("--degradation", type=int, default=0,
                      help="apply benchmark degradation level 1-6 first (robustness checks)")
  parser.add_argument("--threads", type=int, default=4, help="decoding threads")
  args = parser.parse_args(argv)
  console.configure(verbosity_given=False)
  from iab_jax import cli

  try:
    if args.top_k < 1 or (args.batch_size is not None and args.batch_size < 1):
      raise errors.UserError("--top_k and --batch_size must be >= 1")
    if not 0 <= args.degradation <= 6:
      raise errors.UserError(f"--degradation={args.degradation}; expected a level in 0..6")
    runs.load_config(args.workdir)  # a wrong --workdir fails before JAX loads
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
      raise errors.UserError(f"--out {args.out!r}: folder {out_dir!r} does not exist")
    attributor = Attributor(args.workdir, checkpoint=args.checkpoint,
                            batch_size=args.batch_size, degradation=args.degradation)
    result = attributor.attribute_files(args.paths, k=args.top_k, threads=args.threads)
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure ends the process
    cli.exit_on_error(e)
  with open(args.out + ".json", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  write_csv(result, args.out + ".csv", args.top_k)
  print(summary(result))
  console.say("%d images attributed, %d skipped; wrote %s.csv and %s.json",
              len(result["predictions"]), len(result["failed"]), args.out, args.out)
  return 0 if result["predictions"] or not result["failed"] else 1


if __name__ == "__main__":
  sys.exit(main())
