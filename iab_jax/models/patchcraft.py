"""PatchCraft's network (Zhong et al., "PatchCraft: Exploring Texture Patch for Efficient
AI-generated Image Detection"): the rich/poor texture contrast and a small CNN over it.

Each of the two texture mosaics (iab_jax.data.patches.texture_tiles) goes through the same fixed
high-pass front end: 30 hand-made 5x5 filters in seven groups (a: 8 first-order, b: 8
third-order, c: 4 second-order, d: 4 "SQUARE 3x3"-edge, e: 4 "SQUARE 5x5"-edge, f: SQUARE 3x3,
g: SQUARE 5x5), each applied to the sum of the colour channels (the official weights repeat every
filter over the 3 input channels), averaged within each group, the 7 group maps averaged, and the
result binarised per image at its median + 2/255 (torch's median: the lower of the two middle
values). The binary map goes through a shared conv 3x3 1 -> width + BatchNorm + Hardtanh(-1, 1),
applied to each image in its own call, so that in training each gets its own batch statistics
as in the official code; the fingerprint is rich minus poor. The classifier: stages of
conv3x3 + BN + ReLU (4, 2, 2, 2 convs), average-pooled 2x2 between stages, global average
pooling, a linear head over the classes (the benchmark's one change to PatchCraft's binary
head).

The fixed filters are constants of the code, not variables: they never train, and the official
checkpoint's copies are checked against them on import. Parameter names follow the official
layout (data_prep/official_layouts/patchcraft_state_dict.txt):

  official                          Flax variables
  conv_layer.weight / bias          params/conv_layer/kernel / bias
  batch_norm.*                      {params,batch_stats}/batch_norm/*
  nn_classifier.model.{0,3,...}     params/classifier_conv{0..9}
  nn_classifier.model.{1,4,...}     {params,batch_stats}/classifier_bn{0..9}
  nn_classifier.model.35            params/fc
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _torch_init
from iab_jax.models.resnet import BatchNorm

HEAD = "fc"

# The 30 filters as the official FilterLayer sets them (backbones/patchcraft/filter.py), group by
# group, each a 5x5 correlation kernel (torch's conv2d orientation). Kept as published, although
# the diagonal filters of b sum to 2 and those of e to 4 (Fridrich's SRM versions sum to 0): other
# PatchCraft implementations carry the same values.
_Z = [0, 0, 0, 0, 0]


def _first_order() -> list[np.ndarray]:
  # -1 at the centre, +1 at one of the 8 neighbours: up-left, up, up-right, right, down-right,
  # down, down-left, left.
  kernels = []
  for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)):
    k = np.zeros((5, 5))
    k[2, 2] = -1
    k[2 + dy, 2 + dx] = 1
    kernels.append(k)
  return kernels


FILTER_GROUPS: dict[str, np.ndarray] = {
    "a": np.stack(_first_order()),
    "b": np.array([
        [_Z, [0, 2, 1, 0, 0], [0, 1, -3, 0, 0], [0, 0, 0, 1, 0], _Z],
        [[0, 0, -1, 0, 0], [0, 0, 3, 0, 0], [0, 0, -3, 0, 0], [0, 0, 1, 0, 0], _Z],
        [_Z, [0, 0, 1, 2, 0], [0, 0, -3, 1, 0], [0, 1, 0, 0, 0], _Z],
        [_Z, _Z, [0, 1, -3, 3, -1], _Z, _Z],
        [_Z, [0, 1, 0, 0, 0], [0, 0, -3, 1, 0], [0, 0, 1, 2, 0], _Z],
        [_Z, [0, 0, 1, 0, 0], [0, 0, -3, 0, 0], [0, 0, 3, 0, 0], [0, 0, -1, 0, 0]],
        [_Z, [0, 0, 0, 1, 0], [0, 1, -3, 0, 0], [0, 2, 1, 0, 0], _Z],
        [_Z, _Z, [-1, 3, -3, 1, 0], _Z, _Z],
    ], float),
    "c": np.array([
        [_Z, [0, 0, 1, 0, 0], [0, 0, -2, 0, 0], [0, 0, 1, 0, 0], _Z],
        [_Z, _Z, [0, 1, -2, 1, 0], _Z, _Z],
        [_Z, [0, 1, 0, 0, 0], [0, 0, -2, 0, 0], [0, 0, 0, 1, 0], _Z],
        [_Z, [0, 0, 0, 1, 0], [0, 0, -2, 0, 0], [0, 1, 0, 0, 0], _Z],
    ], float),
    "d": np.array([
        [_Z, [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], _Z, _Z],
        [_Z, [0, -1, 2, 0, 0], [0, 2, -4, 0, 0], [0, -1, 2, 0, 0], _Z],
        [_Z, _Z, [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], _Z],
        [_Z, [0, 0, 2, -1, 0], [0, 0, -4, 2, 0], [0, 0, 2, -1, 0], _Z],
    ], float),
    "e": np.array([
        [[1, 2, -2, 2, 1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], _Z, _Z],
        [[1, 2, -2, 0, 0], [2, -6, 8, 0, 0], [-2, 8, -12, 0, 0], [2, -6, 8, 0, 0],
         [1, 2, -2, 0, 0]],
        [_Z, _Z, [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [1, 2, -2, 2, 1]],
        [[0, 0, -2, 2, 1], [0, 0, 8, -6, 2], [0, 0, -12, 8, -2], [0, 0, 8, -6, 2],
         [0, 0, -2, 2, 1]],
    ], float),
    "f": np.array([[_Z, [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], _Z]], float),
    "g": np.array([[[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
                    [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]]], float),
}
IN_CHANNELS = 3  # the official filters see (and sum) the three colour channels


def filter_bank_size() -> int:
  """Numbers in the official fixed filter weights (30 filters x 3 channels x 5 x 5 = 2,250)."""
  return sum(k.shape[0] for k in FILTER_GROUPS.values()) * IN_CHANNELS * 25


def high_pass_binary(x: jax.Array) -> jax.Array:
  """The fixed front end: (N, H, W, 3) normalised images -> (N, H, W, 1) float {0, 1} maps."""
  kernels = np.concatenate(list(FILTER_GROUPS.values()))  # (30, 5, 5)
  kernel = jnp.asarray(kernels.transpose(1, 2, 0)[:, :, None, :], jnp.float32)  # HWIO
  # A filter repeated over the input channels is that filter applied to their sum.
  summed = jnp.sum(x.astype(jnp.float32), axis=-1, keepdims=True)
  responses = jax.lax.conv_general_dilated(
      summed, kernel, (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  start, group_means = 0, []
  for group in FILTER_GROUPS.values():
    group_means.append(jnp.mean(responses[..., start:start + len(group)], axis=-1))
    start += len(group)
  gray = sum(group_means) / 7.0  # (N, H, W)
  flat = gray.reshape(gray.shape[0], -1)
  # torch.median: the lower middle value of an even count.
  median = jnp.sort(flat, axis=-1)[:, (flat.shape[1] - 1) // 2]
  binary = (gray > (median + 2.0 / 255.0)[:, None, None]).astype(jnp.float32)
  return jax.lax.stop_gradient(binary[..., None])


class Model(nn.Module):
  """PatchCraft: (rich, poor) texture mosaics -> (logits, aux).

  x: the rich-texture mosaic (N, H, W, 3), normalised with mean = std = 0.5; or a mapping
  {"rich": ..., "poor": ...}. poor: the poor-texture mosaic; None stands for a textureless
  (all-zero) image, which only shape checks use. Returns (logits (N, num_classes) float32, aux)
  with aux["features"] the pooled classifier feature (N, width) and aux["fingerprint"] the
  rich - poor map (N, H, W, width); with num_classes 0 the pooled feature is the output.
  """
  num_classes: int
  width: int = 32
  stage_convs: Sequence[int] = (4, 2, 2, 2)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array | Mapping[str, jax.Array], poor: jax.Array | None = None, *,
               train: bool) -> tuple[jax.Array, dict[str, Any]]:
    if isinstance(x, Mapping):
      x, poor = x["rich"], x["poor"]
    if poor is None:
      poor = jnp.zeros_like(x)
    conv = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   param_dtype=jnp.float32, kernel_init=_torch_init.kernel_init,
                   bias_init=_torch_init.bias_init(9), name="conv_layer")
    norm = BatchNorm(use_running_average=not train, dtype=self.dtype, name="batch_norm")

    def texture_response(image):
      return jnp.clip(norm(conv(high_pass_binary(image).astype(self.dtype))), -1.0, 1.0)

    fingerprint = texture_response(x) - texture_response(poor)

    y, k = fingerprint, 0
    for stage, convs in enumerate(self.stage_convs):
      if stage:
        y = nn.avg_pool(y, (2, 2), strides=(2, 2))  # torch's AvgPool2d(2): odd edges dropped
      for _ in range(convs):
        y = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=_torch_init.kernel_init,
                    bias_init=_torch_init.bias_init(9 * self.width),
                    name=f"classifier_conv{k}")(y)
        y = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype,
                              name=f"classifier_bn{k}")(y))
        k += 1
    features = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    aux = {"features": features, "fingerprint": fingerprint}
    if not self.num_classes:
      return features, aux
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_torch_init.kernel_init,
                      bias_init=_torch_init.bias_init(self.width), name=HEAD)(features)
    return logits, aux


# ---------------------------------------------------------------------------------------------
# The official checkpoint's layout.


def official_filter_weights() -> dict[str, np.ndarray]:
  """filter.filter_<g>.weight as the official FilterLayer holds them: (n, 3, 5, 5), repeated."""
  return {f"filter.filter_{g}.weight": np.repeat(k[:, None], IN_CHANNELS, axis=1).astype(
      np.float32) for g, k in FILTER_GROUPS.items()}


def _classifier_indices(stage_convs: Sequence[int]) -> tuple[list[int], int]:
  """torch Sequential indices of the classifier's convs, and of its Linear."""
  index, convs = 0, []
  for stage, n in enumerate(stage_convs):
    if stage:
      index += 1  # the AvgPool2d
    for _ in range(n):
      convs.append(index)
      index += 3  # conv, BN, ReLU
  return convs, index + 2  # AdaptiveAvgPool2d, Flatten, then the Linear


def from_torch(state: Mapping[str, np.ndarray], stage_convs: Sequence[int] = (4, 2, 2, 2)
               ) -> dict[str, Any]:
  """An official-layout state dict (numpy, keys already checked) -> {"params", "batch_stats"}."""
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}
  f32 = lambda k: np.asarray(state[k], np.float32)

  def conv(torch_name, flax_name):
    params[flax_name] = {"kernel": np.ascontiguousarray(f32(f"{torch_name}.weight").transpose(
        2, 3, 1, 0)), "bias": f32(f"{torch_name}.bias")}

  def bn(torch_name, flax_name):
    params[flax_name] = {"scale": f32(f"{torch_name}.weight"), "bias": f32(f"{torch_name}.bias")}
    stats[flax_name] = {"mean": f32(f"{torch_name}.running_mean"),
                        "var": f32(f"{torch_name}.running_var")}

  conv("conv_layer", "conv_layer")
  bn("batch_norm", "batch_norm")
  conv_indices, linear = _classifier_indices(stage_convs)
  for k, i in enumerate(conv_indices):
    conv(f"nn_classifier.model.{i}", f"classifier_conv{k}")
    bn(f"nn_classifier.model.{i + 1}", f"classifier_bn{k}")
  params[HEAD] = {"kernel": np.ascontiguousarray(f32(f"nn_classifier.model.{linear}.weight").T),
                  "bias": f32(f"nn_classifier.model.{linear}.bias")}
  return {"params": params, "batch_stats": stats}
