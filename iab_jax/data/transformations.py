"""DNA-Det's 170 image transformations: the classes of its pretext task, and the op drawing one.

DNA-Det (Yang et al., AAAI 2022) first pre-trains its network to tell which of 170 image
transformations was applied to a training image, the transformation's index being the label,
then trains attribution from that network. The list and its order (the index) are the original's
and the benchmark's (training/utils/dna/transforms.py, albumentations 1.3.1):

  0-23     JPEG, quality 30, 33, ..., 99
  24-47    double JPEG: quality q1 from the same list, then q2 from DOUBLE_JPEG_SECOND_QUALITIES
  48-61    Gaussian blur, kernel 3, 5, ..., 29 (sigma from the kernel size, OpenCV's rule)
  62-75    median blur, kernel 3, 5, ..., 29
  76-155   down-up resize: for each of OpenCV's interpolations nearest, linear, cubic, area,
           lanczos4 (the outer loop), down to int(s * side) for s = 0.15, 0.20, ..., 0.90, then
           back to the original size with the same interpolation
  156-169  additive Gaussian noise of variance 10, 13, ..., 49, per pixel and channel

They are written here with OpenCV and NumPy, the calls albumentations 1.3.1 makes, so that the
labels mean what they mean in the official code (tests/data/test_transformations.py compares each
with albumentations). One of its habits is kept on purpose: albumentations hands the RGB array to
OpenCV's JPEG codec, which takes it for BGR, so the chroma planes are computed with the red and
blue channels swapped. The pretext classes are defined by the official code's pixels, quirk
included.

The op `dna_transformation` (registered in iab_jax.data.transforms) draws one of the 170
uniformly from the example's generator, applies it, and emits its index as "transform_id".
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np
from PIL import Image

from iab_jax.data import transforms

JPEG_QUALITIES = tuple(range(30, 100, 3))
# The second compressions of the double-JPEG classes, in the order of the first qualities: a
# fixed draw of the original code (it repeats values, e.g. 39, 60, 81 and 99).
DOUBLE_JPEG_SECOND_QUALITIES = (39, 99, 36, 93, 60, 75, 81, 39, 63, 69, 60, 87, 90, 48, 81, 75,
                                72, 78, 54, 33, 81, 30, 36, 99)
BLUR_KERNELS = tuple(range(3, 30, 2))
# OpenCV's interpolation flags 0-4, the integers the original passes to albumentations' Resize.
RESIZE_INTERPOLATIONS = (("nearest", cv2.INTER_NEAREST), ("linear", cv2.INTER_LINEAR),
                         ("cubic", cv2.INTER_CUBIC), ("area", cv2.INTER_AREA),
                         ("lanczos4", cv2.INTER_LANCZOS4))
RESIZE_SCALES = tuple(round(0.01 * i, 2) for i in range(15, 95, 5))
NOISE_VARIANCES = tuple(range(10, 50, 3))


@dataclasses.dataclass(frozen=True)
class Transformation:
  """One pretext class: its kind and parameters, e.g. Transformation("jpeg", (30,))."""

  kind: str  # jpeg, double_jpeg, gaussian_blur, median_blur, resize, gaussian_noise
  params: tuple

  @property
  def name(self) -> str:
    return f"{self.kind}({', '.join(str(p) for p in self.params)})"


def _transformation_list() -> tuple[Transformation, ...]:
  jpeg = [Transformation("jpeg", (q,)) for q in JPEG_QUALITIES]
  double = [Transformation("double_jpeg", (q1, q2))
            for q1, q2 in zip(JPEG_QUALITIES, DOUBLE_JPEG_SECOND_QUALITIES, strict=True)]
  gaussian = [Transformation("gaussian_blur", (k,)) for k in BLUR_KERNELS]
  median = [Transformation("median_blur", (k,)) for k in BLUR_KERNELS]
  resize = [Transformation("resize", (interpolation, s))
            for interpolation, _ in RESIZE_INTERPOLATIONS for s in RESIZE_SCALES]
  noise = [Transformation("gaussian_noise", (v,)) for v in NOISE_VARIANCES]
  return tuple(jpeg + double + gaussian + median + resize + noise)


TRANSFORMATIONS = _transformation_list()
NUM_TRANSFORMATIONS = len(TRANSFORMATIONS)  # 170


# ---------------------------------------------------------------------------------------------
# The transformations, on (H, W, 3) uint8 arrays.


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
  """OpenCV JPEG encode and decode at `quality` (the array goes to OpenCV as albumentations
  hands it: RGB read as BGR)."""
  ok, encoded = cv2.imencode(".jpg", pixels, (int(cv2.IMWRITE_JPEG_QUALITY), int(quality)))
  if not ok:
    raise ValueError(f"OpenCV could not JPEG-encode an array of shape {pixels.shape}")
  return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)


def gaussian_blur(pixels: np.ndarray, kernel: int) -> np.ndarray:
  """k x k Gaussian blur whose sigma OpenCV derives from k: 0.3 * ((k - 1) / 2 - 1) + 0.8
  (albumentations' GaussianBlur with sigma 0); borders reflected without the edge pixel."""
  return cv2.GaussianBlur(pixels, (kernel, kernel), sigmaX=0)


def median_blur(pixels: np.ndarray, kernel: int) -> np.ndarray:
  """Per-channel median over k x k windows, borders replicated (OpenCV's medianBlur)."""
  return cv2.medianBlur(pixels, kernel)


def resize_down_up(pixels: np.ndarray, interpolation: str, scale: float) -> np.ndarray:
  """Down to int(scale * h) x int(scale * w), back to h x w, both with OpenCV `interpolation`.

  The original sizes from its fixed 256 x 256 working image; sizing from the image itself is
  the same there, and keeps the classes meaningful on the smaller images of shrunk runs.
  """
  flag = dict(RESIZE_INTERPOLATIONS)[interpolation]
  height, width = pixels.shape[:2]
  small = (max(1, int(scale * width)), max(1, int(scale * height)))  # OpenCV takes (w, h)
  down = cv2.resize(pixels, small, interpolation=flag) if small != (width, height) else pixels
  return cv2.resize(down, (width, height), interpolation=flag)


def gaussian_noise(pixels: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
  """pixels + N(0, variance) drawn per pixel and channel, clipped to [0, 255] and truncated to
  uint8 (albumentations' GaussNoise with per_channel=True and its `clipped` cast)."""
  noise = rng.normal(0.0, float(variance) ** 0.5, pixels.shape)
  return np.clip(pixels.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def apply(pixels: np.ndarray, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
  """Transformation `index` (0..169) of an (H, W, 3) uint8 array; rng is used by the noise only."""
  if not 0 <= index < NUM_TRANSFORMATIONS:
    raise ValueError(f"DNA-Det transformation index {index} is not in 0..{NUM_TRANSFORMATIONS - 1}")
  pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
  t = TRANSFORMATIONS[index]
  if t.kind == "jpeg":
    return jpeg(pixels, *t.params)
  if t.kind == "double_jpeg":
    return jpeg(jpeg(pixels, t.params[0]), t.params[1])
  if t.kind == "gaussian_blur":
    return gaussian_blur(pixels, *t.params)
  if t.kind == "median_blur":
    return median_blur(pixels, *t.params)
  if t.kind == "resize":
    return resize_down_up(pixels, *t.params)
  if rng is None:
    raise ValueError(f"DNA-Det transformation {t.name} draws noise; pass an np.random.Generator")
  return gaussian_noise(pixels, *t.params, rng)


# ---------------------------------------------------------------------------------------------
# The op.


def _dna_transformation(img, rng):
  index = int(rng.integers(NUM_TRANSFORMATIONS))
  pixels = apply(np.asarray(img, np.uint8), index, rng)
  return Image.fromarray(pixels), {"transform_id": np.int32(index)}


@transforms.register("dna_transformation", size="keep", random=True, emits=("transform_id",))
def dna_transformation():
  """One of DNA-Det's 170 transformations, drawn uniformly; emits its index as "transform_id"."""
  return functools.partial(_dna_transformation)
