"""Texture patches for the patch-based attributors: PatchCraft's rich/poor tiles, SSP's simplest patch.

Both methods rank small square patches by a texture-diversity score, the sum of absolute
differences between each pixel and its right, lower, lower-right and lower-left neighbours, over
all three channels (Zhong et al., PatchCraft; Chen et al., SSP; the official `compute`):

  texture_tiles(which, patch=32, grid=8)  PatchCraft. The image is cut into non-overlapping
      patch x patch squares, row by row; the poorest third (lowest scores) and the richest third
      are kept, at most grid^2 of each: the poor ones from the poorest up, the rich ones from the
      richest down. Each set is tiled cyclically, row by row, into a grid x grid image, so
      (grid * patch)^2 pixels: 256x256 by default.
  simplest_patch(n=64, size=32)  SSP. n uniform random size x size crops (drawn independently,
      torchvision's RandomCrop) and the one with the lowest score (the first such on ties).
  patchcraft_augment(p=0.1)  PatchCraft's training augmentation on the full-resolution image:
      each with probability p, JPEG at quality U{70..100}, Gaussian blur with sigma U(0, 1),
      bilinear downsampling by U(0.25, 0.5) (not resized back).

The ops return PIL images, so any op (normalize, fork) may follow them.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
from PIL import Image, ImageFilter

from iab_jax.data import degradations, transforms


def texture_diversity(patches: np.ndarray) -> np.ndarray:
  """Texture-diversity scores of (..., h, w, c) integer patches, one per patch, as int64.

  Horizontal, vertical and both diagonal neighbour differences, summed in absolute value over
  every pixel pair and channel (PatchCraft's and SSP's `compute`).
  """
  x = np.asarray(patches).astype(np.int64)
  axes = (-3, -2, -1)
  horizontal = np.abs(x[..., :, :-1, :] - x[..., :, 1:, :]).sum(axes)
  vertical = np.abs(x[..., :-1, :, :] - x[..., 1:, :, :]).sum(axes)
  diagonal = np.abs(x[..., :-1, :-1, :] - x[..., 1:, 1:, :]).sum(axes)
  antidiagonal = np.abs(x[..., 1:, :-1, :] - x[..., :-1, 1:, :]).sum(axes)
  return horizontal + vertical + diagonal + antidiagonal


def grid_patches(image: np.ndarray, patch: int) -> np.ndarray:
  """The full non-overlapping patch x patch squares of an (H, W, C) image, row by row: (n, p, p, C).

  A partial row or column of patches at the bottom or right edge is dropped.
  """
  rows, cols = image.shape[0] // patch, image.shape[1] // patch
  x = image[:rows * patch, :cols * patch]
  x = x.reshape(rows, patch, cols, patch, image.shape[2]).transpose(0, 2, 1, 3, 4)
  return x.reshape(rows * cols, patch, patch, image.shape[2])


def rich_poor_patches(image: np.ndarray, patch: int, count: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(rich, poor) patches of an (H, W, 3) uint8 image, at most `count` of each.

  The poorest third in increasing score, the richest third in decreasing score (PatchCraft's
  `split_and_reconstruct_image`); a third is at least one patch. Empty when no patch fits.
  """
  patches = grid_patches(image, patch)
  if not len(patches):
    return patches, patches
  # numpy's default argsort, as the official code sorts: ties keep the same order as there.
  order = np.argsort(texture_diversity(patches))
  third = max(1, len(patches) // 3)
  poor = order[:third][:count]
  rich = order[len(order) - third:][-count:][::-1]
  return patches[rich], patches[poor]


def tile(patches: np.ndarray, grid: int) -> np.ndarray:
  """A grid x grid mosaic of (n, p, p, C) patches, row by row, repeating them cyclically."""
  index = np.arange(grid * grid) % len(patches)
  p, c = patches.shape[1], patches.shape[3]
  mosaic = patches[index].reshape(grid, grid, p, p, c).transpose(0, 2, 1, 3, 4)
  return mosaic.reshape(grid * p, grid * p, c)


def _texture_tiles(img, rng, *, which, patch, grid):
  del rng
  rich, poor = rich_poor_patches(np.asarray(img, np.uint8), patch, grid * grid)
  chosen = rich if which == "rich" else poor
  if not len(chosen):
    # An image smaller than one patch: the official code hands on black images.
    return Image.new("RGB", (grid * patch, grid * patch))
  return Image.fromarray(tile(chosen, grid))


def _tiles_size(args, kwargs) -> transforms.Size:
  del kwargs
  patch = args[1] if len(args) > 1 else 32
  grid = args[2] if len(args) > 2 else 8
  return grid * patch, grid * patch


def _check_positive(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{what} must be a positive integer, got {value!r}")
  return int(value)


@transforms.register("texture_tiles", size=_tiles_size)
def texture_tiles(which, patch=32, grid=8):
  """texture_tiles('rich'|'poor', patch=32, grid=8): PatchCraft's (grid * patch)^2 mosaic of the
  image's richest or poorest patch x patch patches."""
  if which not in ("rich", "poor"):
    raise ValueError(f"texture_tiles takes 'rich' or 'poor', got {which!r}")
  return functools.partial(_texture_tiles, which=which, patch=_check_positive(patch, "patch"),
                           grid=_check_positive(grid, "grid"))


def _simplest_patch(img, rng, *, n, size):
  if min(img.size) < size:
    # The official patch_img resizes an image too small to crop (to its 256x256 working size).
    img = img.resize((max(size, img.width), max(size, img.height)), Image.Resampling.BILINEAR)
  pixels = np.asarray(img, np.uint8)
  height, width = pixels.shape[:2]
  tops = rng.integers(0, height - size + 1, size=n)
  lefts = rng.integers(0, width - size + 1, size=n)
  crops = np.stack([pixels[t:t + size, l:l + size] for t, l in zip(tops, lefts)])
  # argmin takes the first of equal scores, as the official stable sort does.
  return Image.fromarray(crops[int(np.argmin(texture_diversity(crops)))])


def _simplest_patch_size(args, kwargs) -> transforms.Size:
  del kwargs
  size = args[1] if len(args) > 1 else 32
  return size, size


@transforms.register("simplest_patch", size=_simplest_patch_size, random=True)
def simplest_patch(n=64, size=32):
  """simplest_patch(n=64, size=32): of n random size x size crops, SSP's lowest-scoring one."""
  return functools.partial(_simplest_patch, n=_check_positive(n, "n"),
                           size=_check_positive(size, "size"))


def _patchcraft_augment(img, rng, *, p):
  # The official draws, in this order: JPEG, blur, downsample, each independently.
  if rng.random() < p:
    img = degradations.jpeg(img, int(rng.integers(70, 101)))
  if rng.random() < p:
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.0))))
  if rng.random() < p:
    scale = float(rng.uniform(0.25, 0.5))
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    img = img.resize(size, Image.Resampling.BILINEAR)
  return img


@transforms.register("patchcraft_augment", size=lambda args, kwargs: None, random=True)
def patchcraft_augment(p=0.1):
  """patchcraft_augment(p=0.1): each with probability p, JPEG q~U{70..100}, Gaussian blur
  sigma~U(0, 1), bilinear downsampling x U(0.25, 0.5) (PatchCraft's training augmentation)."""
  if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
    raise ValueError(f"patchcraft_augment probability must be in [0, 1], got {p!r}")
  return functools.partial(_patchcraft_augment, p=float(p))
