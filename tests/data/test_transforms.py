"""Transform ops: torchvision-equal resize/crop arithmetic, parsing, randomness, pickling."""

import pickle

import numpy as np
import pytest
from PIL import Image

from iab_jax.data import degradations
from iab_jax.data import transforms


def random_image(w, h, seed=0):
  rng = np.random.default_rng(seed + 1000 * w + h)
  return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


# ---- resize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("wh, size, expected", [
    ((500, 375), 256, (341, 256)),  # 256 * 500 / 375 = 341.33
    ((375, 500), 256, (256, 341)),
    ((300, 700), 224, (224, 522)),  # 522.67 truncates, does not round
    ((1024, 1024), 256, (256, 256)),
    ((257, 256), 256, (257, 256)),  # already at size: unchanged
    ((9, 1), 4, (36, 4)),
])
def test_resize_shorter_side_sizes(wh, size, expected):
  assert transforms.shorter_side_size(*wh, size) == expected
  out = transforms.parse(f"resize({size})")(random_image(*wh))
  assert out.shape == (expected[1], expected[0], 3) and out.dtype == np.uint8


def test_resize_shorter_side_pixels_match_pil_bilinear():
  img = random_image(500, 375)
  out = transforms.parse("resize(256)")(img)
  np.testing.assert_array_equal(out, np.asarray(img.resize((341, 256), Image.BILINEAR)))


def test_resize_exact_and_method():
  img = random_image(50, 37)
  out = transforms.parse("resize(20, 30, method='bicubic')")(img)
  np.testing.assert_array_equal(out, np.asarray(img.resize((30, 20), Image.BICUBIC)))
  out = transforms.parse("resize((20, 30), method='nearest')")(img)
  np.testing.assert_array_equal(out, np.asarray(img.resize((30, 20), Image.NEAREST)))
  # Nearest and bilinear really differ, so the keyword is honoured.
  assert not np.array_equal(transforms.parse("resize(20, 30)")(img), out)


# ---- central_crop ------------------------------------------------------------------------------


def test_central_crop_offsets():
  img = random_image(37, 53)  # H=53, W=37
  arr = np.asarray(img)
  # top = round(14.5) = 14 (half to even), left = round(6.5) = 6.
  np.testing.assert_array_equal(transforms.parse("central_crop(24)")(img), arr[14:38, 6:30])
  # (h, w) = (20, 30): top = round(16.5) = 16, left = round(3.5) = 4.
  np.testing.assert_array_equal(transforms.parse("central_crop(20, 30)")(img), arr[16:36, 4:34])


def test_central_crop_pads_with_zeros():
  img = random_image(5, 3)  # W=5, H=3
  out = transforms.parse("central_crop(8)")(img)
  assert out.shape == (8, 8, 3)
  # Width pads 1 left / 2 right, height 2 top / 3 bottom (odd pixel after).
  np.testing.assert_array_equal(out[2:5, 1:6], np.asarray(img))
  mask = np.ones((8, 8), bool)
  mask[2:5, 1:6] = False
  assert not out[mask].any()


def test_central_crop_pads_one_side_then_crops_other():
  img = random_image(10, 4)  # W=10, H=4; crop 6x6 pads height only, then crops width.
  out = transforms.parse("central_crop(6)")(img)
  expected = np.zeros((6, 6, 3), np.uint8)
  expected[1:5] = np.asarray(img)[:, 2:8]
  np.testing.assert_array_equal(out, expected)


# ---- random ops --------------------------------------------------------------------------------


def test_random_crop_is_a_slice_and_seeded():
  img = random_image(40, 30)
  arr = np.asarray(img)
  t = transforms.parse("random_crop(16)")
  assert t.is_random
  outs = [t(img, np.random.default_rng(seed)) for seed in range(8)]
  np.testing.assert_array_equal(outs[0], t(img, np.random.default_rng(0)))
  assert len({o.tobytes() for o in outs}) > 1
  for out in outs:
    assert out.shape == (16, 16, 3)
    found = any(np.array_equal(out, arr[i:i + 16, j:j + 16])
                for i in range(15) for j in range(25))
    assert found


def test_random_crop_pads_small_images():
  img = random_image(4, 4)
  t = transforms.parse("random_crop(6)")
  placements = set()
  for seed in range(20):
    out = t(img, np.random.default_rng(seed))
    assert out.shape == (6, 6, 3)
    # Padding by the whole shortfall on each side keeps the 4x4 image inside, at a random place.
    assert out.astype(np.int64).sum() == np.asarray(img).astype(np.int64).sum()
    placements.add(tuple(np.argwhere(out.any(-1)).min(0)))
  assert len(placements) > 1


def test_flip_lr():
  img = random_image(9, 5)
  arr = np.asarray(img)
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(transforms.parse("flip_lr(1.0)")(img, rng), arr[:, ::-1])
  np.testing.assert_array_equal(transforms.parse("flip_lr(p=0)")(img, rng), arr)
  t = transforms.parse("flip_lr")
  flips = [np.array_equal(t(img, np.random.default_rng(s)), arr[:, ::-1]) for s in range(20)]
  assert any(flips) and not all(flips)
  assert flips == [np.array_equal(t(img, np.random.default_rng(s)), arr[:, ::-1])
                   for s in range(20)]


def test_random_op_without_rng_is_an_error():
  with pytest.raises(ValueError, match="random"):
    transforms.parse("flip_lr")(random_image(4, 4))


# ---- normalize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, mean, std", [
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ("unit", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
])
def test_normalize_kinds(kind, mean, std):
  img = random_image(7, 6)
  out = transforms.parse(f"normalize({kind!r})")(img)
  assert out.dtype == np.float32 and out.shape == (6, 7, 3)
  expected = (np.asarray(img, np.float64) / 255 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_normalize_explicit_and_known_values():
  img = Image.new("RGB", (2, 2), (255, 0, 128))
  out = transforms.parse("normalize('imagenet')")(img)
  np.testing.assert_allclose(out[0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224,
                                         (128 / 255 - 0.406) / 0.225], rtol=1e-6)
  half = transforms.parse("normalize('half')")(img)
  np.testing.assert_allclose(half[0, 0, :2], [1.0, -1.0])
  explicit = transforms.parse("normalize(mean=(0.1, 0.2, 0.3), std=(2, 2, 2))")(img)
  np.testing.assert_allclose(explicit[1, 1], [(1 - 0.1) / 2, -0.1, (128 / 255 - 0.3) / 2],
                             rtol=1e-6)


# ---- pipeline, parsing, canonical form ---------------------------------------------------------


def test_full_pipeline_and_array_input():
  img = random_image(60, 45)
  spec = "degrade(3)|resize(32)|central_crop(28)|normalize('imagenet')"
  t = transforms.parse(spec)
  out = t(img)
  assert out.shape == (28, 28, 3) and out.dtype == np.float32 and t.is_float
  np.testing.assert_array_equal(t(np.asarray(img)), out)
  # Same as composing the pieces by hand.
  step = degradations.degrade(img, 3).resize((42, 32), Image.BILINEAR)
  manual = np.asarray(step, np.float32)[2:30, 7:35] / np.float32(255)
  manual = (manual - np.float32([0.485, 0.456, 0.406])) / np.float32([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out, manual, rtol=1e-6, atol=1e-6)


def test_degradation_ops_match_module():
  img = random_image(33, 21)
  for spec, expected in [("downsample(0.25)", degradations.downsample(img, 0.25)),
                         ("jpeg(30)", degradations.jpeg(img, 30)),
                         ("blur(2.5)", degradations.gaussian_blur(img, 2.5)),
                         ("degrade(6)", degradations.degrade(img, 6))]:
    np.testing.assert_array_equal(transforms.parse(spec)(img), np.asarray(expected))


def test_empty_spec_is_identity():
  img = random_image(5, 4)
  t = transforms.parse("")
  assert t.ops == [] and t.spec == "" and not t.is_random
  np.testing.assert_array_equal(t(img), np.asarray(img))


def test_flags():
  assert not transforms.parse("resize(256)|central_crop(224)").has_degradation
  assert transforms.parse("jpeg(65)|resize(256)").has_degradation
  assert not transforms.parse("degrade(0)|resize(256)").has_degradation
  assert transforms.is_degradation_free("resize(256)|flip_lr")
  assert not transforms.is_degradation_free("blur(1)")
  assert not transforms.parse("resize(256)|normalize('unit')").is_random
  assert transforms.parse("resize(256)|flip_lr").is_random


def test_canonical_spec():
  t = transforms.parse(" flip_lr(p=0.5) | resize(size=256, method='bilinear')|"
                       "normalize(kind='imagenet') ")
  assert t.spec == "flip_lr|resize(256)|normalize('imagenet')"
  assert t.ops == [("flip_lr", (), {}), ("resize", (256,), {}), ("normalize", ("imagenet",), {})]
  assert transforms.parse(t.spec).ops == t.ops
  assert transforms.parse("resize(224, method='bicubic')").spec == "resize(224, method='bicubic')"
  assert transforms.parse("flip_lr(0.3)").spec == "flip_lr(0.3)"


@pytest.mark.parametrize("spec, message", [
    ("resze(256)", r"'resze'.*known ops:.*central_crop.*resize"),
    ("resize(1, 2, 3)", r"'resize'"),
    ("resize(big=1)", r"'resize'"),
    ("resize(x)", r"'x' of transform op 'resize'"),
    ("jpeg(0)", r"'jpeg\(0\)'.*quality"),
    ("degrade(9)", r"'degrade\(9\)'.*level 9"),
    ("resize(256, method='cubic')",
     r"resize\(256, method='cubic'\).*unknown resize method 'cubic'"),
    ("central_crop(0)", r"'central_crop\(0\)'"),
    ("normalize('imagenet')|flip_lr", r"'flip_lr' takes an image, but 'normalize' before it"),
    ("normalize('foo')", r"'foo'"),
    ("resize(256)|", r"cannot parse"),
    ("resize(256).x", r"cannot parse transform op"),
])
def test_parse_errors_name_the_op(spec, message):
  with pytest.raises(ValueError, match=message):
    transforms.parse(spec)


def test_pickle_round_trip():
  t = transforms.parse("jpeg(65)|resize(32)|random_crop(24)|flip_lr|normalize('clip')")
  clone = pickle.loads(pickle.dumps(t))
  assert clone.spec == t.spec and clone.is_random
  img = random_image(50, 40)
  np.testing.assert_array_equal(clone(img, np.random.default_rng(3)),
                                t(img, np.random.default_rng(3)))


@pytest.mark.parametrize("spec, prefix, rest", [
    ("resize(256)|central_crop(256)|random_crop(224)|flip_lr|normalize('imagenet')",
     "resize(256)|central_crop(256)", "random_crop(224)|flip_lr|normalize('imagenet')"),
    ("resize(size=256, method='bilinear')|central_crop(256)",
     "resize(256)|central_crop(256)", ""),
    ("degrade(0)|resize(256)|central_crop(256)|normalize('clip')",
     "resize(256)|central_crop(256)", "normalize('clip')"),
    ("flip_lr(p=0.5)|normalize('unit')", "flip_lr", "normalize('unit')"),
    ("resize(256)|flip_lr", "", "resize(256)|flip_lr"),
    ("degrade(3)|resize(256)|central_crop(256)", "resize(256)|central_crop(256)", None),
    ("resize(224)|central_crop(224)", "resize(256)|central_crop(256)", None),
    ("resize(256, method='bicubic')|central_crop(256)", "resize(256)|central_crop(256)", None),
    ("resize(256)", "resize(256)|central_crop(256)", None),
])
def test_strip_prefix(spec, prefix, rest):
  assert transforms.strip_prefix(spec, prefix) == rest


@pytest.mark.parametrize("spec, size", [
    ("normalize('half')", None),
    ("resize(256)", None),
    ("resize(256)|central_crop(224)|normalize('imagenet')", (224, 224)),
    ("resize(64, 48)|flip_lr", (64, 48)),
    ("resize((32, 16))", (32, 16)),
    ("degrade(3)|random_crop(16, 8)|jpeg(30)", (16, 8)),
    ("central_crop(32)|resize(40)", None),
    ("", None),
])
def test_output_size(spec, size):
  assert transforms.parse(spec).output_size == size


def test_output_size_holds_for_images_of_any_size():
  t = transforms.parse("resize(40)|central_crop(24, 32)|flip_lr")
  rng = np.random.default_rng(0)
  for w, h in ((10, 90), (300, 41), (24, 32), (1, 1)):
    out = t(np.zeros((h, w, 3), np.uint8), rng)
    assert out.shape[:2] == t.output_size == (24, 32)
