"""Test-time degradations of ImageAttributionBench, bit-exact with the benchmark's PIL code.

Every method is evaluated on the clean test split and on six degraded copies of it (DESIGN §3):
levels 1-2 downsample with nearest and come back up to the original size with nearest, levels 3-4
re-encode as JPEG, levels 5-6 blur with a Gaussian. A degradation runs on the decoded original,
before the method's own transform, so it sees the image at full resolution.

The parametric forms take any value, for robustness curves beyond the seven fixed levels.
"""

from __future__ import annotations

import io
import math
import numbers

from PIL import Image, ImageFilter

# level -> (kind, value); kinds are also the names of the transform ops that apply them.
LEVELS = {
    0: ("clean", None),
    1: ("downsample", 0.5),
    2: ("downsample", 0.25),
    3: ("jpeg", 65),
    4: ("jpeg", 30),
    5: ("blur", 3),
    6: ("blur", 5),
}
LEVEL_NAMES = ("Clean", "DS 0.5x", "DS 0.25x", "JPEG q65", "JPEG q30", "Blur s3", "Blur s5")
NUM_LEVELS = 7


def check_level(level) -> int:
  """Returns `level` if it names one of the benchmark's levels, else raises ValueError."""
  # 1.0 == 1 would find a key, but a float level is a config mistake worth reporting.
  if isinstance(level, bool) or not isinstance(level, numbers.Integral) or level not in LEVELS:
    raise ValueError(f"unknown degradation level {level!r}; known levels are 0..{NUM_LEVELS - 1}")
  return int(level)


def check_scale(scale) -> float:
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
    raise ValueError(f"downsample scale must be a number > 0, got {scale!r}")
  if math.isinf(scale):
    raise ValueError(f"downsample scale must be finite, got {scale!r}")
  return scale


def check_quality(quality) -> int:
  if (isinstance(quality, bool) or not isinstance(quality, numbers.Integral)
      or not 1 <= quality <= 100):
    raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
  return int(quality)


def check_sigma(sigma) -> float:
  if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
    raise ValueError(f"Gaussian blur sigma must be a number >= 0, got {sigma!r}")
  if math.isinf(sigma):
    raise ValueError(f"Gaussian blur sigma must be finite, got {sigma!r}")
  return sigma


def _as_rgb(img: Image.Image) -> Image.Image:
  return img if img.mode == "RGB" else img.convert("RGB")


def downsample(img: Image.Image, scale: float) -> Image.Image:
  """Nearest-neighbour resize by `scale`, then nearest back to the original size."""
  check_scale(scale)
  img = _as_rgb(img)
  w, h = img.size
  # int() truncates as the benchmark does; max(1, .) keeps 1-pixel-wide images alive at x0.25.
  small = img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.NEAREST)
  return small.resize((w, h), Image.NEAREST)


def jpeg(img: Image.Image, quality: int) -> Image.Image:
  """Round trip through PIL's JPEG encoder (default 4:2:0 chroma subsampling)."""
  check_quality(quality)
  buffer = io.BytesIO()
  img.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    return decoded.convert("RGB")


def gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
  """PIL's Gaussian blur; its `radius` argument is the standard deviation of the kernel."""
  check_sigma(sigma)
  return _as_rgb(img).filter(ImageFilter.GaussianBlur(radius=sigma))


def degrade(img: Image.Image, level: int) -> Image.Image:
  """Applies benchmark degradation `level` (0 = clean, returned as is, 1..6 as in `LEVELS`)."""
  kind, value = LEVELS[check_level(level)]
  if kind == "downsample":
    return downsample(img, value)
  if kind == "jpeg":
    return jpeg(img, value)
  if kind == "blur":
    return gaussian_blur(img, value)
  return _as_rgb(img)
