"""The mini-bench: iab_jax's built-in attribution dataset, built offline from scikit-image's photos.

Quickstart and tests need a dataset that exists without downloads or GPUs. The mini-bench cuts
patches from the real photographs that ship inside scikit-image, groups them under the benchmark's
semantic names (so the standard, semantic and open-set protocols run unchanged), and passes every
patch through a handful of simulated "generators". Each generator is a fixed encoder/decoder in
the spirit of the One-for-All fingerprint simulator: a 2x down-sampling encoder, then a decoder
built from the generator's own up-sampling operator (VariUp: nearest, bilinear, bicubic, Lanczos,
pixel shuffle, transposed convolution) and a VariStruct cell (a small 3x3 convolution, an
activation and a normalisation, in a generator-specific order). The decoder output is fused with
the input so that the content stays put (PSNR >= 28 dB against the source patch, checked per
image) while the generator's up-sampling and cell leave a consistent, subtle trace that a small
CNN learns to attribute.

  python -m data_prep.minibench --out /tmp/minibench

The default is 72 patches of 64x64 per semantic class (cat, FFHQ, COCO, ImageNet-1k), each in 7
classes (real + 6 generators): 2016 PNG images, built in a few seconds on one CPU core. A small
CNN attributes them far above chance in seconds (tests/data_prep/test_minibench.py).

Everything is drawn from seeded NumPy generators, so two builds with the same arguments give the
same bytes and the same dataset fingerprint. A generator's own parameters come from its own fixed
seed, independent of --seed (which picks the patches): a generator stays the same generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from iab_jax.data import generators as generators_lib
from iab_jax.data import records

# Semantic class -> scikit-image photos cut into its patches. The names are the benchmark's, so
# protocols that pick semantics by name (task 1 = cat, task 3 = FFHQ) work on the mini-bench.
PHOTOS: dict[str, tuple[str, ...]] = {
    "cat": ("chelsea",),
    "FFHQ": ("astronaut",),
    "COCO": ("coffee", "rocket", "motorcycle_left"),
    "ImageNet-1k": ("hubble_deep_field", "immunohistochemistry", "retina"),
}
# Photos whose native resolution is so high that a 64-pixel patch holds almost no detail are
# downscaled (area average) first; detail is where the fingerprints show.
_PHOTO_SCALE = {"retina": 2}

# A fingerprint needs texture to show up and unclipped pixels to live in: flat or saturated
# candidates (hubble's black sky, retina's border) are redrawn.
_MIN_PATCH_STD = 10.0
_MAX_CLIPPED_FRACTION = 0.25
_MAX_DRAWS_PER_PATCH = 200

# Fusion of decoder output and input, and the per-image cap that guarantees the PSNR bound: the
# cap (30 dB before rounding) leaves room for the 8-bit rounding (<= 0.5 per pixel) within 28 dB.
FUSION_WEIGHT = 0.6
PSNR_CAP_DB = 30.0
PSNR_FLOOR_DB = 28.0


def load_photo(name: str) -> np.ndarray:
  """A scikit-image sample photo as uint8 HxWx3 (all of these ship with the package)."""
  from skimage import data

  if name == "motorcycle_left":
    img = data.stereo_motorcycle()[0]
  else:
    img = getattr(data, name)()
  img = np.asarray(img)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  img = img[..., :3].astype(np.uint8)
  factor = _PHOTO_SCALE.get(name, 1)
  if factor > 1:
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    img = img[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).astype(np.float64)
    img = np.round(img.mean(axis=(1, 3))).astype(np.uint8)
  return img


def sample_boxes(photo: np.ndarray, count: int, patch_size: int,
                 rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
  """`count` distinct (left, top, right, bottom) patch boxes with texture and few clipped pixels."""
  h, w = photo.shape[:2]
  if h < patch_size or w < patch_size:
    raise ValueError(f"photo of {w}x{h} is smaller than the patch size {patch_size}")
  boxes, seen = [], set()
  for _ in range(count * _MAX_DRAWS_PER_PATCH):
    if len(boxes) == count:
      break
    top = int(rng.integers(0, h - patch_size + 1))
    left = int(rng.integers(0, w - patch_size + 1))
    if (top, left) in seen:
      continue
    seen.add((top, left))
    patch = photo[top:top + patch_size, left:left + patch_size]
    clipped = np.mean(np.all((patch == 0) | (patch == 255), axis=-1))
    if patch.mean(axis=-1).std() < _MIN_PATCH_STD or clipped > _MAX_CLIPPED_FRACTION:
      continue
    boxes.append((left, top, left + patch_size, top + patch_size))
  if len(boxes) < count:
    raise ValueError(f"found only {len(boxes)} of {count} textured patches; ask for fewer")
  return boxes


# ----------------------------------------------------------------------------------------------
# The simulated generators. Images are float64 batches (N, H, W, 3) in [0, 255]; float64 keeps
# the arithmetic, and therefore the PNG bytes, reproducible.


def encode(x: np.ndarray) -> np.ndarray:
  """The shared encoder: 2x2 average pooling, the information every decoder starts from."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _keys_cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  t = np.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _lanczos3(t: np.ndarray) -> np.ndarray:
  return np.where(np.abs(t) < 3, np.sinc(t) * np.sinc(t / 3), 0.0)


def _triangle(t: np.ndarray) -> np.ndarray:
  return np.maximum(0.0, 1 - np.abs(t))


def _interpolate_axis(x: np.ndarray, axis: int, kernel: Callable, support: int) -> np.ndarray:
  """2x up-sampling along one axis with half-pixel centres and replicated edges (as resize does)."""
  n = x.shape[axis]
  offsets = np.arange(-support, support + 1)
  phases = []
  for shift in (-0.25, 0.25):  # output 2i samples the input at i - 1/4, output 2i+1 at i + 1/4
    weights = kernel(shift - offsets)
    weights = weights / weights.sum()
    out = 0.0
    for offset, weight in zip(offsets, weights):
      if weight != 0:
        index = np.clip(np.arange(n) + offset, 0, n - 1)
        out = out + weight * np.take(x, index, axis=axis)
    phases.append(out)
  stacked = np.stack(phases, axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = 2 * n
  return stacked.reshape(shape)


def upsample_interpolate(d: np.ndarray, kernel: Callable, support: int) -> np.ndarray:
  return _interpolate_axis(_interpolate_axis(d, 1, kernel, support), 2, kernel, support)


def upsample_nearest(d: np.ndarray) -> np.ndarray:
  return np.repeat(np.repeat(d, 2, axis=1), 2, axis=2)


def upsample_pixel_shuffle(d: np.ndarray, mix: np.ndarray) -> np.ndarray:
  """1x1 convolution to 4x the channels, then depth-to-space; mix is (2, 2, C_in, C_out)."""
  n, h, w, c = d.shape
  out = np.einsum("nhwi,abio->nhawbo", d, mix)
  return out.reshape(n, 2 * h, 2 * w, c)


def upsample_transposed_conv(d: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Stride-2 depthwise transposed convolution with a 4x4 kernel, written per output phase.

  taps is (2, 2, 2, 2, C): for output phase (a, b) the weights of its 2x2 input neighbourhood
  (rows i-1+a, i+a; columns j-1+b, j+b). The bilinear kernel is one such taps array; the
  generator's own kernel departs from it, which gives the checkerboard of learnt up-samplers.
  """
  n, h, w, c = d.shape
  padded = np.pad(d, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  out = np.empty((n, h, 2, w, 2, c))
  for a in range(2):
    for b in range(2):
      acc = 0.0
      for p in range(2):
        for q in range(2):
          acc = acc + taps[a, b, p, q] * padded[:, a + p:a + p + h, b + q:b + q + w]
      out[:, :, a, :, b] = acc
  return out.reshape(n, 2 * h, 2 * w, c)


def bilinear_taps(channels: int) -> np.ndarray:
  one_d = np.array([[0.25, 0.75], [0.75, 0.25]])  # phase 0: rows (i-1, i); phase 1: (i, i+1)
  taps = np.einsum("ap,bq->abpq", one_d, one_d)
  return np.repeat(taps[..., None], channels, axis=-1)


def conv3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Full 3x3 convolution with reflected edges; kernel is (3, 3, C_in, C_out)."""
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  out = 0.0
  for dy in range(3):
    for dx in range(3):
      out = out + np.einsum("nhwi,io->nhwo", padded[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
  return out


def _gelu(z):
  return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": _gelu,
    "silu": lambda z: z / (1 + np.exp(-z)),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.1 * z),
    "elu": lambda z: np.where(z >= 0, z, np.expm1(np.minimum(z, 0))),
    "tanh": np.tanh,
    "softplus": lambda z: np.logaddexp(0, z),
}
# How far the cell's activation bends the features: the decoder works in pixel units, and a full
# activation would be a tone curve far beyond the PSNR budget.
ACTIVATION_STRENGTH = 0.15


def _moments(x: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
  axes = (1, 2) if per_channel else (1, 2, 3)
  return x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True) + 1e-6


@dataclasses.dataclass(frozen=True)
class MiniGenerator:
  """One simulated generator: fixed up-sampler and cell, all parameters drawn from `seed`."""

  name: str
  upsample: str  # nearest | bilinear | bicubic | lanczos | pixel_shuffle | transposed_conv
  activation: str
  norm: str  # instance | layer
  seed: int
  kernel_noise: float = 0.12  # spread of the cell's 3x3 kernel around the identity
  upsample_noise: float = 0.04  # spread of learnt up-samplers around nearest / bilinear

  def params(self) -> dict[str, np.ndarray | tuple[str, ...]]:
    rng = np.random.default_rng(self.seed)
    kernel = self.kernel_noise * rng.standard_normal((3, 3, 3, 3))
    # Zero-mean per input/output pair: the kernel leaves flat colours alone (no colour cast) and
    # acts on detail only, where fingerprints live.
    kernel -= kernel.mean(axis=(0, 1), keepdims=True)
    kernel[1, 1] += np.eye(3)
    order = tuple(rng.permutation(["conv", "act", "norm"]))
    # The learnt up-samplers' departures average to zero over the four output phases: they make
    # a periodic pattern, not an overall colour change.
    mix = self.upsample_noise * rng.standard_normal((2, 2, 3, 3))
    mix = np.eye(3)[None, None] + mix - mix.mean(axis=(0, 1))
    taps = self.upsample_noise * rng.standard_normal((2, 2, 2, 2, 3))
    taps = bilinear_taps(3) + taps - taps.mean(axis=(0, 1))
    return {"kernel": kernel, "order": order, "mix": mix, "taps": taps}

  def decode(self, d: np.ndarray, params) -> np.ndarray:
    """VariUp then one VariStruct cell, from the encoded (N, H/2, W/2, 3) batch."""
    if self.upsample == "nearest":
      u = upsample_nearest(d)
    elif self.upsample == "bilinear":
      u = upsample_interpolate(d, _triangle, 1)
    elif self.upsample == "bicubic":
      u = upsample_interpolate(d, _keys_cubic, 2)
    elif self.upsample == "lanczos":
      u = upsample_interpolate(d, _lanczos3, 3)
    elif self.upsample == "pixel_shuffle":
      u = upsample_pixel_shuffle(d, params["mix"])
    elif self.upsample == "transposed_conv":
      u = upsample_transposed_conv(d, params["taps"])
    else:
      raise ValueError(f"unknown up-sampler {self.upsample!r}")
    per_channel = self.norm == "instance"
    ref_mean, ref_std = _moments(u, per_channel)
    v = u
    for op in params["order"]:
      if op == "conv":
        v = conv3x3(v, params["kernel"])
      elif op == "act":
        # Activations act on standardised features, as in a network, then map back to pixels.
        mean, std = _moments(v, True)
        z = (v - mean) / std
        z = z + ACTIVATION_STRENGTH * (ACTIVATIONS[self.activation](z) - z)
        v = z * std + mean
      else:
        # The norm's affine part restores the statistics the cell received.
        mean, std = _moments(v, per_channel)
        v = (v - mean) / std * ref_std + ref_mean
    return v

  def generate(self, x: np.ndarray, params=None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) patches -> uint8 generated patches and the per-image cap gains."""
    params = self.params() if params is None else params
    x = x.astype(np.float64)
    residual = FUSION_WEIGHT * (self.decode(encode(x), params) - x)
    # The cap shrinks a residual that would break the PSNR budget (gain < 1 for that image only).
    mse = np.mean(residual ** 2, axis=(1, 2, 3))
    budget = 255.0 ** 2 / 10 ** (PSNR_CAP_DB / 10)
    gain = np.minimum(1.0, np.sqrt(budget / np.maximum(mse, 1e-12)))
    out = np.clip(np.round(x + residual * gain[:, None, None, None]), 0, 255).astype(np.uint8)
    return out, gain

  def __call__(self, x: np.ndarray, params=None) -> np.ndarray:
    return self.generate(x, params)[0]


GENERATORS: tuple[MiniGenerator, ...] = (
    MiniGenerator("mini_nearest", "nearest", "gelu", "instance", seed=101),
    MiniGenerator("mini_bilinear", "bilinear", "silu", "layer", seed=102),
    MiniGenerator("mini_bicubic", "bicubic", "leaky_relu", "instance", seed=103),
    MiniGenerator("mini_lanczos", "lanczos", "elu", "layer", seed=104),
    MiniGenerator("mini_shuffle", "pixel_shuffle", "tanh", "instance", seed=105),
    MiniGenerator("mini_deconv", "transposed_conv", "softplus", "layer", seed=106),
)
GENERATOR_LEVELS = (0, -1, -1, -1)  # generated; no place in Table 6's families


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-image PSNR in dB of uint8 batches (inf where identical)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10 * np.log10(255.0 ** 2 / mse)


# ----------------------------------------------------------------------------------------------
# Building the dataset.


def png_bytes(pixels: np.ndarray) -> bytes:
  from PIL import Image

  buf = io.BytesIO()
  # Fixed compression settings: the bytes, hence sha256 and fingerprint, depend on them.
  Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


@dataclasses.dataclass
class Patches:
  """The real patches of one semantic class, in dataset order."""

  semantic: str
  photos: list[str]  # per patch
  indices: list[int]  # per patch, its index among its photo's patches
  boxes: list[tuple[int, int, int, int]]  # in the photo as load_photo returns it
  pixels: np.ndarray  # (N, P, P, 3) uint8


def cut_patches(semantic: str, count: int, patch_size: int, seed: int) -> Patches:
  """`count` patches for a semantic class, shared as evenly as possible among its photos."""
  names = PHOTOS[semantic]
  shares = [count // len(names) + (i < count % len(names)) for i in range(len(names))]
  out_photos, out_indices, out_boxes, tiles = [], [], [], []
  for name, share in zip(names, shares):
    if share > 1000:
      raise ValueError("at most 1000 patches per photo (file names follow the official _p<P> rule)")
    photo = load_photo(name)
    # Seeded by the photo's name as well, so adding a photo elsewhere changes no other patch.
    rng = np.random.default_rng([seed, *name.encode()])
    for j, (left, top, right, bottom) in enumerate(sample_boxes(photo, share, patch_size, rng)):
      out_photos.append(name)
      out_indices.append(j)
      out_boxes.append((left, top, right, bottom))
      tiles.append(photo[top:bottom, left:right])
  return Patches(semantic, out_photos, out_indices, out_boxes, np.stack(tiles))


def build_records(patches_per_semantic: int = 72, patch_size: int = 64, seed: int = 0,
                  semantics: Sequence[str] | None = None,
                  generators: Sequence[MiniGenerator] = GENERATORS,
                  ) -> tuple[list[str], Iterator[records.ImageRecord], dict]:
  """Classes, the records in dataset order (class, semantic, photo, patch) and build statistics.

  All pixels are made (and measured) here, so the statistics are complete on return; the
  iterator only encodes PNGs as the writer asks for records.
  """
  if patch_size % 2:
    raise ValueError("the patch size must be even (the encoder pools 2x2)")
  semantics = list(semantics or PHOTOS)
  by_name = {g.name: g for g in generators}
  classes = generators_lib.class_order(["real", *by_name])
  label = {name: i for i, name in enumerate(classes)}

  patches = {s: cut_patches(s, patches_per_semantic, patch_size, seed) for s in semantics}
  images: dict[str, dict[str, np.ndarray]] = {"real": {s: p.pixels for s, p in patches.items()}}
  stats = {}
  for gen in generators:
    params = gen.params()
    images[gen.name], values, gains = {}, [], []
    for s, p in patches.items():
      images[gen.name][s], gain = gen.generate(p.pixels, params)
      values.append(psnr(images[gen.name][s], p.pixels))
      gains.append(gain)
    values, gains = np.concatenate(values), np.concatenate(gains)
    stats[gen.name] = {
        "upsample": gen.upsample, "activation": gen.activation, "norm": gen.norm,
        "cell_order": list(params["order"]), "seed": gen.seed,
        "psnr_min": round(float(values.min()), 3), "psnr_mean": round(float(values.mean()), 3),
        "capped_fraction": round(float(np.mean(gains < 1)), 3)}

  def iterate() -> Iterator[records.ImageRecord]:
    for cls in classes:
      levels = generators_lib.family_levels("real") if cls == "real" else GENERATOR_LEVELS
      for s in semantics:
        p = patches[s]
        for i, (photo, j, box) in enumerate(zip(p.photos, p.indices, p.boxes)):
          data = png_bytes(images[cls][s][i])
          filename = f"{photo}_{j:03d}_p{j}_i0.png"
          extra = {"box": list(box)}
          if cls != "real":
            extra["source_key"] = f"real/{s}/{filename}"
          yield records.ImageRecord(
              image=data, key=f"{cls}/{s}/{filename}", generator=cls, label=label[cls],
              levels=tuple(levels), semantic=s, source=f"minibench/{photo}", width=patch_size,
              height=patch_size, format="PNG", sha256=records.sha256_bytes(data),
              filename=filename, extra=extra)

  info = {
      "seed": seed, "patch_size": patch_size, "patches_per_semantic": patches_per_semantic,
      "photos": {s: list(PHOTOS[s]) for s in semantics}, "photo_downscale": dict(_PHOTO_SCALE),
      "fusion_weight": FUSION_WEIGHT,
      "psnr_cap_db": PSNR_CAP_DB, "generators": stats}
  return classes, iterate(), info


def build(out: str, patches_per_semantic: int = 72, patch_size: int = 64, seed: int = 0,
          semantics: Sequence[str] | None = None, records_per_shard: int = 1000,
          verbose: bool = True) -> dict:
  """Builds the mini-bench under `out` and returns its dataset.json contents."""
  start = time.perf_counter()
  classes, stream, info = build_records(patches_per_semantic, patch_size, seed, semantics)
  for name, s in info["generators"].items():
    if s["psnr_min"] < PSNR_FLOOR_DB:
      raise AssertionError(f"{name}: PSNR {s['psnr_min']} dB is below {PSNR_FLOOR_DB} dB")
  dataset = records.write_dataset(out, stream, classes, records_per_shard,
                                  name="minibench", minibench=info)
  if verbose:
    print(summary(dataset, time.perf_counter() - start))
  return dataset


def summary(dataset: dict, seconds: float) -> str:
  info = dataset["minibench"]
  semantics = list(info["photos"])
  width = max(len(c) for c in dataset["classes"]) + 2
  lines = [f"mini-bench: {dataset['num_records']} images, {len(dataset['classes'])} classes, "
           f"{info['patch_size']}px patches, seed {info['seed']}, built in {seconds:.1f} s",
           "".ljust(width) + "".join(s.rjust(13) for s in semantics) + "   PSNR min / mean (dB)"]
  for cls in dataset["classes"]:
    counts = dataset["counts"].get(cls, {})
    row = cls.ljust(width) + "".join(str(counts.get(s, 0)).rjust(13) for s in semantics)
    if cls in info["generators"]:
      g = info["generators"][cls]
      row += f"   {g['psnr_min']:.2f} / {g['psnr_mean']:.2f}"
    lines.append(row)
  lines.append(f"fingerprint {dataset['fingerprint']}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m data_prep.minibench",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="dataset directory to write")
  parser.add_argument("--patch_size", type=int, default=64)
  parser.add_argument("--patches_per_semantic", type=int, default=72,
                      help="real patches per semantic class, shared among its photos")
  parser.add_argument("--semantics", nargs="+", default=None, choices=sorted(PHOTOS))
  parser.add_argument("--seed", type=int, default=0, help="picks the patch positions")
  parser.add_argument("--records_per_shard", type=int, default=1000)
  args = parser.parse_args(argv)
  if os.path.exists(os.path.join(args.out, records.DATASET_JSON)):
    parser.error(f"{args.out} already holds a dataset")
  build(args.out, args.patches_per_semantic, args.patch_size, args.seed, args.semantics,
        args.records_per_shard)


if __name__ == "__main__":
  main()
