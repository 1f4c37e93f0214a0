"""Degradations must equal the benchmark's PIL computation bit for bit."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from iab_jax.data import degradations

# (width, height): even, odd, non-square both ways, and 1-pixel-wide images where max(1, .) matters.
SIZES = [(64, 48), (37, 53), (101, 29), (1, 9), (7, 1), (3, 2)]


def random_image(w, h, seed=0):
  rng = np.random.default_rng(seed + 1000 * w + h)
  return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def reference(img, level):
  """The benchmark's degradations, written out directly with PIL."""
  w, h = img.size
  if level in (1, 2):
    s = 0.5 if level == 1 else 0.25
    small = img.resize((max(1, int(w * s)), max(1, int(h * s))), Image.NEAREST)
    return small.resize((w, h), Image.NEAREST)
  if level in (3, 4):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=65 if level == 3 else 30)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
  if level in (5, 6):
    return img.filter(ImageFilter.GaussianBlur(radius=3 if level == 5 else 5))
  return img


@pytest.mark.parametrize("level", range(degradations.NUM_LEVELS))
@pytest.mark.parametrize("size", SIZES)
def test_level_matches_pil(level, size):
  img = random_image(*size)
  out = degradations.degrade(img, level)
  assert out.mode == "RGB" and out.size == img.size
  np.testing.assert_array_equal(np.asarray(out), np.asarray(reference(img, level)))


def test_levels_table():
  assert degradations.NUM_LEVELS == 7
  assert len(degradations.LEVEL_NAMES) == 7 and len(degradations.LEVELS) == 7
  assert degradations.LEVEL_NAMES[0] == "Clean" and degradations.LEVEL_NAMES[4] == "JPEG q30"
  assert degradations.LEVELS[2] == ("downsample", 0.25)
  assert degradations.LEVELS[5] == ("blur", 3)


def test_downsample_tiny_keeps_one_pixel():
  # A 1x9 column at x0.25 would be 0 wide without max(1, .); nearest up gives back one column.
  img = random_image(1, 9)
  out = np.asarray(degradations.downsample(img, 0.25))
  assert out.shape == (9, 1, 3)
  # 9 * 0.25 -> 2 rows kept, each repeated; the image is blocky, not the original.
  assert len(np.unique(out.reshape(9, 3), axis=0)) <= 2


def test_downsample_loses_detail_and_parametric():
  img = random_image(64, 48)
  assert not np.array_equal(np.asarray(degradations.downsample(img, 0.5)), np.asarray(img))
  np.testing.assert_array_equal(np.asarray(degradations.downsample(img, 1.0)), np.asarray(img))
  # Any scale: x0.3 on 64x48 keeps a 19x14 grid.
  out = degradations.downsample(img, 0.3)
  ref = img.resize((19, 14), Image.NEAREST).resize((64, 48), Image.NEAREST)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_jpeg_differs_and_is_deterministic():
  img = random_image(37, 53)
  a, b = degradations.jpeg(img, 50), degradations.jpeg(img, 50)
  assert a.mode == "RGB" and a.size == img.size
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(img))
  # Lower quality loses more.
  err = lambda q: np.abs(np.asarray(degradations.jpeg(img, q), np.int32) - np.asarray(img)).mean()
  assert err(10) > err(95)


def test_jpeg_from_non_rgb_input():
  rgba = random_image(16, 16).convert("RGBA")
  out = degradations.jpeg(rgba, 65)
  assert out.mode == "RGB"
  np.testing.assert_array_equal(np.asarray(out), np.asarray(reference(rgba.convert("RGB"), 3)))


def test_gaussian_blur_parametric():
  img = random_image(40, 30)
  out = degradations.gaussian_blur(img, 1.5)
  ref = img.filter(ImageFilter.GaussianBlur(radius=1.5))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  # Blur lowers the variance of random content.
  assert np.asarray(out, np.float64).std() < np.asarray(img, np.float64).std()


def test_clean_is_identity():
  img = random_image(10, 12)
  np.testing.assert_array_equal(np.asarray(degradations.degrade(img, 0)), np.asarray(img))


@pytest.mark.parametrize("call, message", [
    (lambda img: degradations.degrade(img, 7), "level 7;"),
    (lambda img: degradations.degrade(img, -1), "level -1;"),
    (lambda img: degradations.degrade(img, 1.0), "level 1.0;"),
    (lambda img: degradations.downsample(img, 0), "scale .* got 0$"),
    (lambda img: degradations.downsample(img, -0.5), "scale .* got -0.5$"),
    (lambda img: degradations.jpeg(img, 0), "quality .* got 0$"),
    (lambda img: degradations.jpeg(img, 101), "quality .* got 101$"),
    (lambda img: degradations.jpeg(img, 50.0), "quality .* got 50.0$"),
    (lambda img: degradations.gaussian_blur(img, -1), "sigma .* got -1$"),
])
def test_errors_name_the_value(call, message):
  with pytest.raises(ValueError, match=message):
    call(random_image(4, 4))
