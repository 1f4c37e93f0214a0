"""DNA-Det's 170 transformations against the official list (albumentations 1.3.1, re-stated here
from training/utils/dna/transforms.py) and against their PIL / NumPy / SciPy definitions, and
the op that draws one."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from iab_jax.data import transformations, transforms

SIDE = 64


def _image(seed=0, side=SIDE):
  """Smooth content plus grain, so that every transformation changes it."""
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), np.int64)
  return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


def _official_list(side):
  """The official get_transforms(img_size=(side, side)).augs, in its order."""
  import albumentations as A

  always = dict(always_apply=True)
  qualities = list(range(30, 100, 3))
  second = [39, 99, 36, 93, 60, 75, 81, 39, 63, 69, 60, 87, 90, 48, 81, 75, 72, 78, 54, 33, 81,
            30, 36, 99]
  augs = [A.JpegCompression(quality_lower=q, quality_upper=q, **always) for q in qualities]
  augs += [A.Compose([A.JpegCompression(quality_lower=q1, quality_upper=q1, **always),
                      A.JpegCompression(quality_lower=q2, quality_upper=q2, **always)])
           for q1, q2 in zip(qualities, second)]
  kernels = list(range(3, 30, 2))
  augs += [A.GaussianBlur(blur_limit=[k, k], **always) for k in kernels]
  augs += [A.MedianBlur(blur_limit=[k, k], **always) for k in kernels]
  for interpolation in range(5):
    for scale in [round(0.01 * i, 2) for i in range(15, 95, 5)]:
      small = int(scale * side)
      augs.append(A.Compose([A.Resize(small, small, interpolation=interpolation, **always),
                             A.Resize(side, side, interpolation=interpolation, **always)]))
  augs += [A.GaussNoise(var_limit=[v, v], **always) for v in range(10, 50, 3)]
  return augs


def test_the_list_its_count_and_order():
  kinds = [t.kind for t in transformations.TRANSFORMATIONS]
  assert transformations.NUM_TRANSFORMATIONS == len(kinds) == 170
  # Contiguous blocks in the official order: the index is the pretext label.
  blocks = [("jpeg", 24), ("double_jpeg", 24), ("gaussian_blur", 14), ("median_blur", 14),
            ("resize", 80), ("gaussian_noise", 14)]
  assert kinds == [kind for kind, n in blocks for _ in range(n)]
  table = transformations.TRANSFORMATIONS
  assert table[0].params == (30,) and table[23].params == (99,)
  assert table[24].params == (30, 39) and table[47].params == (99, 99)
  assert table[48].params == (3,) and table[61].params == (29,) and table[75].params == (29,)
  assert table[76].params == ("nearest", 0.15) and table[91].params == ("nearest", 0.9)
  assert table[92].params == ("linear", 0.15) and table[155].params == ("lanczos4", 0.9)
  assert table[156].params == (10,) and table[169].params == (49,)
  assert len({t.name for t in table}) == 170


def test_each_transformation_equals_albumentations():
  import albumentations as A

  x = _image()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # albumentations' deprecation notices
    official = _official_list(SIDE)
  assert len(official) == transformations.NUM_TRANSFORMATIONS
  for k, aug in enumerate(official):
    t = transformations.TRANSFORMATIONS[k]
    if t.kind == "gaussian_noise":
      # Its noise comes from its own generator: the same draw, through albumentations' function.
      noise = np.random.default_rng(k).normal(0.0, t.params[0] ** 0.5, x.shape)
      expected = A.augmentations.functional.gauss_noise(x, gauss=noise)
      ours = transformations.apply(x, k, np.random.default_rng(k))
    else:
      expected = aug(image=x)["image"]
      ours = transformations.apply(x, k)
    assert ours.dtype == np.uint8 and ours.shape == x.shape, t.name
    np.testing.assert_array_equal(ours, expected, err_msg=t.name)
    if t.kind != "resize" or t.params[1] < 0.5:
      assert not np.array_equal(ours, x), f"{t.name} left the image unchanged"


def _pil_jpeg(pixels, quality):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def _separable_blur(pixels, taps):
  """Convolution with taps along both axes, borders reflected without the edge (OpenCV's
  default BORDER_REFLECT_101, numpy's 'reflect')."""
  r = len(taps) // 2
  x = np.pad(pixels.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
  h, w = pixels.shape[:2]
  x = sum(t * x[i:i + h] for i, t in enumerate(taps))
  return sum(t * x[:, i:i + w] for i, t in enumerate(taps))


def test_against_their_definitions():
  x = _image(1)
  # JPEG: libjpeg through PIL on the channels reversed (OpenCV reads the RGB array as BGR).
  for q in (30, 75, 99):
    np.testing.assert_array_equal(transformations.jpeg(x, q),
                                  _pil_jpeg(x[..., ::-1].copy(), q)[..., ::-1])
  # Gaussian blur: sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8. For k <= 7 OpenCV uses its fixed
  # binomial-like kernels instead (a documented special case); OpenCV's 8-bit blur rounds its
  # kernel to fixed point, hence a tolerance of about one grey level.
  fixed = {3: [1, 2, 1], 5: [1, 4, 6, 4, 1], 7: [2, 7, 14, 18, 14, 7, 2]}
  for k in transformations.BLUR_KERNELS:
    if k in fixed:
      taps = np.array(fixed[k], np.float64) / sum(fixed[k])
    else:
      sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
      t = np.arange(k) - (k - 1) / 2
      taps = np.exp(-t ** 2 / (2 * sigma ** 2))
      taps /= taps.sum()
    diff = np.abs(transformations.gaussian_blur(x, k) - _separable_blur(x, taps))
    assert diff.max() <= 1.1 and diff.mean() < 0.35, (k, diff.max(), diff.mean())
  # Median blur: SciPy's median filter per channel, edges replicated.
  for k in (3, 11, 29):
    np.testing.assert_array_equal(transformations.median_blur(x, k),
                                  ndimage.median_filter(x, size=(k, k, 1), mode="nearest"))
  # Nearest down-up resize: source index floor(i * src / dst), both ways.
  for scale in (0.15, 0.55, 0.9):
    n = int(scale * SIDE)
    down_index = np.floor(np.arange(n) * SIDE / n).astype(int)
    up_index = np.floor(np.arange(SIDE) * n / SIDE).astype(int)
    expected = x[down_index][:, down_index][up_index][:, up_index]
    np.testing.assert_array_equal(transformations.resize_down_up(x, "nearest", scale), expected)
  # Every interpolation gives back the input size, also on a non-square image.
  wide = _image(2)[:40]
  for name, _ in transformations.RESIZE_INTERPOLATIONS:
    assert transformations.resize_down_up(wide, name, 0.3).shape == wide.shape


def test_gaussian_noise_statistics():
  grey = np.full((128, 128, 3), 128, np.uint8)  # far from the clipping bounds
  for variance in (10, 49):
    out = transformations.gaussian_noise(grey, variance, np.random.default_rng(variance))
    residual = out.astype(np.float64) - 128
    # Truncation to uint8 shifts the mean by about -1/2 and adds about 1/12 of variance.
    assert abs(residual.mean() + 0.5) < 0.1
    assert abs(residual.var() - (variance + 1 / 12)) < 0.03 * variance
    # Independent per channel.
    assert abs(np.corrcoef(residual[..., 0].ravel(), residual[..., 1].ravel())[0, 1]) < 0.03
  with pytest.raises(ValueError, match="Generator"):
    transformations.apply(grey, 160)
  with pytest.raises(ValueError, match="not in 0..169"):
    transformations.apply(grey, 170)


def test_the_op_draws_uniformly_and_emits_the_index():
  spec = transforms.parse("dna_transformation")
  assert spec.is_random and spec.emits == ("transform_id",) and spec.output_size is None
  x = _image(3, side=16)
  rng = np.random.default_rng(0)
  ids = []
  for _ in range(3400):
    _, emitted = spec.apply(x, rng)
    ids.append(int(emitted["transform_id"]))
  counts = np.bincount(ids, minlength=170)
  assert len(counts) == 170 and counts.min() > 0  # 20 expected each
  assert abs(counts[:85].sum() / 3400 - 0.5) < 0.05
  # The pixels are the drawn transformation's, the noise drawn right after the index.
  for seed in range(30):
    out, emitted = spec.apply(x, np.random.default_rng(seed))
    k = int(emitted["transform_id"])
    assert emitted["transform_id"].dtype == np.int32
    rng = np.random.default_rng(seed)
    assert int(rng.integers(170)) == k
    np.testing.assert_array_equal(out, transformations.apply(x, k, rng))
  # In a DNA-Det training spec: a stack of normalised crops and the label beside it.
  spec = transforms.parse("resize(32)|central_crop(32)|dna_transformation|"
                          "resize(64, 64, method='bicubic')|random_crops(4, 16)|normalize('half')")
  crops, emitted = spec.apply(_image(4), np.random.default_rng(1))
  assert crops.shape == (4, 16, 16, 3) and crops.dtype == np.float32
  assert set(emitted) == {"transform_id"}
