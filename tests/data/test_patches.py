"""Texture patches: the diversity score, PatchCraft's rich/poor mosaics, SSP's simplest patch and
PatchCraft's augmentation, against brute-force re-statements of the official loops."""

import pickle

import numpy as np
import pytest
from PIL import Image

from iab_jax.data import patches, transforms


def random_image(h, w, seed=0, smooth_rows=0):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  # Some flat regions so that poor patches exist and scores spread widely.
  pixels[:smooth_rows] = pixels[:smooth_rows] // 64 * 64
  return pixels


def score_loop(patch):
  """The score as a loop over pixel pairs: right, down, down-right, down-left neighbours."""
  h, w, c = patch.shape
  p = patch.astype(int)
  total = 0
  for y in range(h):
    for x in range(w):
      for k in range(c):
        if x + 1 < w:
          total += abs(p[y, x, k] - p[y, x + 1, k])
        if y + 1 < h:
          total += abs(p[y, x, k] - p[y + 1, x, k])
        if x + 1 < w and y + 1 < h:
          total += abs(p[y, x, k] - p[y + 1, x + 1, k])
        if x >= 1 and y + 1 < h:
          total += abs(p[y, x, k] - p[y + 1, x - 1, k])
  return total


def test_texture_diversity_equals_brute_force_loop():
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, size=(3, 7, 6, 3), dtype=np.uint8)
  scores = patches.texture_diversity(batch)
  assert scores.dtype == np.int64
  assert scores.tolist() == [score_loop(p) for p in batch]
  assert patches.texture_diversity(np.full((5, 5, 3), 9, np.uint8)) == 0


def official_mosaics(image, patch, grid):
  """PatchCraft's split_and_reconstruct_image as loops (rich, poor)."""
  found = []
  for i in range(0, image.shape[0], patch):
    for j in range(0, image.shape[1], patch):
      p = image[i:i + patch, j:j + patch]
      if p.shape[:2] == (patch, patch):
        found.append(p)
  order = np.argsort([score_loop(p) for p in found])
  third = max(1, len(found) // 3)
  poor = list(order[:third])[:grid * grid]
  rich = list(order[-third:])[-grid * grid:][::-1]
  out = []
  for chosen in (rich, poor):
    mosaic = np.zeros((grid * patch, grid * patch, 3), np.uint8)
    for i in range(grid):
      for j in range(grid):
        mosaic[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = found[
            chosen[(i * grid + j) % len(chosen)]]
    out.append(mosaic)
  return out


@pytest.mark.parametrize("hw, patch, grid", [
    ((40, 52), 4, 3),   # 130 patches, partial edges dropped; a third (43) > grid^2
    ((24, 24), 4, 3),   # 36 patches: third 12 > 9
    ((20, 16), 4, 4),   # 20 patches: third 6 < 16, tiled cyclically
    ((8, 4), 4, 2),     # 2 patches: a third is still one
])
def test_texture_tiles_equal_the_official_loops(hw, patch, grid):
  image = random_image(*hw, seed=hw[0], smooth_rows=hw[0] // 2)
  rich, poor = official_mosaics(image, patch, grid)
  for which, expected in (("rich", rich), ("poor", poor)):
    op = transforms.parse(f"texture_tiles('{which}', {patch}, {grid})")
    assert op.output_size == (grid * patch, grid * patch)
    np.testing.assert_array_equal(op(image), expected)


def test_texture_tiles_order_rich_first_poor_first():
  # Patches of known scores: a 1x4 strip of 2x2 patches with 0, 1, 2, 3 gradient steps.
  image = np.zeros((2, 8 * 3, 3), np.uint8)
  for k in range(24 // 2):
    image[0, 2 * k + 1] = k % 4 * 10
  op = lambda which: transforms.parse(f"texture_tiles('{which}', 2, 2)")(image)
  scores = patches.texture_diversity(patches.grid_patches(image, 2))
  rich, poor = patches.rich_poor_patches(image, 2, 4)
  assert list(patches.texture_diversity(rich)) == sorted(scores)[-4:][::-1]
  assert list(patches.texture_diversity(poor)) == sorted(scores)[:4]
  assert op("rich").shape == op("poor").shape == (4, 4, 3)


def test_texture_tiles_image_smaller_than_a_patch_gives_black():
  out = transforms.parse("texture_tiles('rich', 32, 2)")(np.full((10, 10, 3), 7, np.uint8))
  np.testing.assert_array_equal(out, np.zeros((64, 64, 3), np.uint8))


def test_texture_tiles_rejects_bad_arguments():
  with pytest.raises(ValueError, match="rich"):
    transforms.parse("texture_tiles('middle')")
  with pytest.raises(ValueError, match="positive"):
    transforms.parse("texture_tiles('rich', 0)")


def test_simplest_patch_is_the_lowest_of_the_drawn_crops():
  image = random_image(40, 50, seed=3, smooth_rows=20)
  op = transforms.parse("simplest_patch(12, 8)")
  assert op.is_random and op.output_size == (8, 8)
  out = op(image, np.random.default_rng(5))
  # The same draws by hand: torchvision's RandomCrop offsets, tops first, then lefts.
  rng = np.random.default_rng(5)
  tops, lefts = rng.integers(0, 33, size=12), rng.integers(0, 43, size=12)
  crops = [image[t:t + 8, l:l + 8] for t, l in zip(tops, lefts)]
  scores = [score_loop(c) for c in crops]
  np.testing.assert_array_equal(out, crops[int(np.argmin(scores))])
  # Reproducible per seed, different across seeds (the evaluation's per-image draws).
  np.testing.assert_array_equal(op(image, np.random.default_rng(5)), out)
  others = [op(image, np.random.default_rng(s)) for s in range(6, 12)]
  assert any(not np.array_equal(o, out) for o in others)


def test_simplest_patch_full_pipeline_shape_and_pickle():
  spec = "resize(256)|central_crop(256)|simplest_patch(64, 32)|normalize('imagenet')"
  op = pickle.loads(pickle.dumps(transforms.parse(spec)))
  out = op(Image.fromarray(random_image(300, 280)), np.random.default_rng(0))
  assert out.shape == (32, 32, 3) and out.dtype == np.float32


def test_patchcraft_augment_probabilities():
  image = Image.fromarray(random_image(64, 80, seed=1))
  never = transforms.parse("patchcraft_augment(0.0)")
  np.testing.assert_array_equal(never(image, np.random.default_rng(0)), np.asarray(image))
  always = transforms.parse("patchcraft_augment(1.0)")
  sizes = {always(image, np.random.default_rng(s)).shape for s in range(20)}
  # Downsampled by 0.25-0.5 every time: 16-40 columns, 20-40 rows... never the input size.
  for h, w, c in sizes:
    assert 16 <= h <= 32 and 20 <= w <= 40 and c == 3
  # p = 0.1: most images pass unchanged.
  some = transforms.parse("patchcraft_augment")
  unchanged = sum(np.array_equal(some(image, np.random.default_rng(s)), np.asarray(image))
                  for s in range(50))
  assert 25 <= unchanged < 50
  with pytest.raises(ValueError, match="probability"):
    transforms.parse("patchcraft_augment(2)")


def test_patchcraft_fork_gives_rich_and_poor():
  spec = ("patchcraft_augment|fork(rich=\"texture_tiles('rich', 8, 8)|normalize('half')\", "
          "poor=\"texture_tiles('poor', 8, 8)|normalize('half')\")")
  op = transforms.parse(spec)
  assert op.output_size == (64, 64)
  out = op(Image.fromarray(random_image(64, 64, seed=2, smooth_rows=30)),
           np.random.default_rng(0))
  assert set(out) == {"rich", "poor"}
  assert out["rich"].shape == out["poor"].shape == (64, 64, 3)
  assert out["rich"].dtype == np.float32 and -1 <= out["poor"].min() <= out["poor"].max() <= 1
