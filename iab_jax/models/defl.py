"""Li et al.'s DEFL network (ACM MM 2024, "Are handcrafted filters helpful for attributing
AI-generated images?") as the ImageAttributionBench code builds it, in Flax Linen.

Multi-directional high-pass filters (MHFs): 8 base 3x3 filters, each a 1 at one of the 8
neighbours and -1 at the centre (2 horizontal, 2 vertical, 4 diagonal); every combination of 1..7
of them, taken in the base order and convolved one after another with scipy's
convolve2d(mode='same') (so each step keeps the central 3x3), gives 254 filters. A seeded shuffle
splits them into 4 groups of 64 (the last: 62 + the first 2 of its own group again).

The network keeps the full resolution through 4 levels. A level is a directional block (DCB:
conv3x3 in->64 without bias whose kernel is the level's 64 MHFs repeated over the input channels,
ReLU) beside a standard block (SCB: conv3x3 in->64 without bias, BN, ReLU), concatenated to 128
channels. Then a 1x1 conv 128 -> width, the four bottleneck stages of a torchvision ResNet-50
(no stem: layer1 runs at the input resolution) and a global mean pool give the directional
feature (N, 32 * width). It is concatenated with a frozen CLIP image embedding (computed outside,
iab_jax.models.clip_resnet) and fused by a linear layer into the fingerprint (N, 2048); an MLP
2048 -> 512 -> 256 -> classes with ReLU classifies it.

Variables (official module names in brackets):
  params/level{k}_dcb/kernel (3, 3, in, 64)       [defl_model.level{k}_dcb.conv.weight]; in the
                                                    "mhf" collection instead when the filters are
                                                    kept fixed (train_filters=False)
  params/level{k}_scb/conv/kernel, {params,batch_stats}/level{k}_scb/bn/*  [...level{k}_scb.*]
  params/adjust_channels/{kernel,bias}            [semantic_extractor.adjust_channels]
  {params,batch_stats}/resnet/layer{i}_{j}/...    [semantic_extractor.resnet_for_defl.{i-1}.{j}]
                                                    (iab_jax.models.resnet's names)
  params/fusion_layer/{kernel,bias}               [semantic_extractor.fusion_layer]
  params/nn_classifier/fc{1,2,3}/{kernel,bias}    [nn_classifier.fc{1,2,3}]
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from scipy.signal import convolve2d

from iab_jax.models import _loading, _torch_init
from iab_jax.models import resnet

NUM_LEVELS = 4
FILTERS_PER_GROUP = 64  # the DCB's output channels: one MHF per channel
MAX_COMBINATION = 7


def base_filters() -> np.ndarray:
  """The 8 base MHFs (8, 3, 3) in the official order: horizontal (up, down), vertical (left,
  right), diagonal (up-left, up-right, down-left, down-right); a 1 at the neighbour, -1 centre."""
  neighbours = [(0, 1), (2, 1), (1, 0), (1, 2), (0, 0), (0, 2), (2, 0), (2, 2)]
  filters = np.zeros((len(neighbours), 3, 3), np.int64)
  for f, (row, col) in zip(filters, neighbours):
    f[1, 1] = -1
    f[row, col] = 1
  return filters


@functools.lru_cache(maxsize=None)
def composite_filters() -> np.ndarray:
  """The 254 MHFs (254, 3, 3) float32, in the official order (by size, then itertools order)."""
  base = base_filters()
  out = []
  for n in range(1, MAX_COMBINATION + 1):
    for combo in itertools.combinations(range(len(base)), n):
      f = base[combo[0]]
      for k in combo[1:]:
        f = convolve2d(f, base[k], mode="same")
      out.append(f)
  return np.asarray(out, np.float32)


@functools.lru_cache(maxsize=None)
def mhf_groups(seed: int) -> np.ndarray:
  """The 4 groups of 64 MHFs (4, 64, 3, 3): a shuffle, then consecutive slices.

  The shuffle is numpy's legacy one (np.random.seed(seed); np.random.shuffle(filters)), the
  generator the official code draws from. The official run does not control its state at that
  point (its data split consumed it before), so no seed reproduces its partition; an imported
  checkpoint brings its own filters anyway.
  """
  filters = composite_filters()
  order = np.arange(len(filters))
  np.random.RandomState(seed).shuffle(order)
  shuffled = filters[order]
  last = np.concatenate([shuffled[192:254], shuffled[192:194]])
  groups = np.stack([shuffled[:64], shuffled[64:128], shuffled[128:192], last])
  return np.ascontiguousarray(groups)


def dcb_kernel(seed: int, level: int, in_channels: int) -> np.ndarray:
  """The DCB kernel of `level` (1-based) in Flax layout (3, 3, in, 64): each output channel's MHF
  repeated over the input channels (the official `filters.repeat(1, in, 1, 1)`)."""
  group = mhf_groups(seed)[level - 1]  # (64, 3, 3)
  kernel = np.broadcast_to(group.transpose(1, 2, 0)[:, :, None, :],
                           (3, 3, in_channels, group.shape[0]))
  return np.ascontiguousarray(kernel, np.float32)


class DirectionalBlock(nn.Module):
  """DCB: conv3x3 (padding 1, no bias) with MHF kernels, ReLU."""
  level: int
  seed: int
  trainable: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (3, 3, x.shape[-1], FILTERS_PER_GROUP)
    init = lambda *_: jnp.asarray(dcb_kernel(self.seed, self.level, shape[2]))
    if self.trainable:  # the official code: an nn.Parameter like any other
      kernel = self.param("kernel", init, shape, jnp.float32)
    else:  # fixed handcrafted filters: outside "params", so no optimizer touches them
      kernel = self.variable("mhf", "kernel", init, shape, jnp.float32).value
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return nn.relu(y)


class StandardBlock(nn.Module):
  """SCB: conv3x3 (padding 1, no bias, torch's default init), BN, ReLU."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.Conv(FILTERS_PER_GROUP, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_torch_init.kernel_init,
                name="conv")(x)
    y = resnet.BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(y)
    return nn.relu(y)


class ResNetStages(nn.Module):
  """torchvision ResNet-50's layer1..layer4 and average pool, without the stem."""
  stage_sizes: Sequence[int]
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_features = x.shape[-1]
    for i, num_blocks in enumerate(self.stage_sizes):
      width = self.width * 2**i
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        downsample = stride != 1 or in_features != width * 4
        x = resnet.Bottleneck(width, stride, downsample, dtype=self.dtype,
                              name=f"layer{i + 1}_{j}")(x, train=train)
        in_features = width * 4
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class Model(nn.Module):
  """DEFL + fusion with a CLIP embedding + MLP classifier; the defaults are the official sizes.

  Input: x (N, H, W, 3) float32 normalised with mean = std = 0.5, and clip_features (N, clip_dim)
  float32, the frozen CLIP image embedding of the same images. Without clip_features (the model
  contract's shape check) the fusion sees zeros in their place.
  Returns (logits (N, num_classes) float32, aux) with aux["features"] = aux["fingerprint"], the
  fused (N, fingerprint_dim) float32 feature the contrastive loss works on; with num_classes 0
  the fingerprint is the output.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64  # ResNet's stem width: the 1x1 conv's output, layer1's input
  clip_dim: int = 768  # CLIP RN50x16's embedding
  fingerprint_dim: int = 2048
  hidden: Sequence[int] = (512, 256)
  train_filters: bool = True
  filter_seed: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, clip_features: jax.Array | None = None, *, train: bool
               ) -> tuple[jax.Array, dict[str, Any]]:
    x = x.astype(self.dtype)
    for level in range(1, NUM_LEVELS + 1):
      directional = DirectionalBlock(level, self.filter_seed, self.train_filters, self.dtype,
                                     name=f"level{level}_dcb")(x)
      standard = StandardBlock(self.dtype, name=f"level{level}_scb")(x, train=train)
      x = jnp.concatenate([directional, standard], axis=-1)
    x = nn.Conv(self.width, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=_torch_init.kernel_init,
                bias_init=_torch_init.bias_init(x.shape[-1]), name="adjust_channels")(x)
    directional_feature = ResNetStages(tuple(self.stage_sizes), self.width, self.dtype,
                                       name="resnet")(x, train=train)

    if clip_features is None:
      clip_features = jnp.zeros((x.shape[0], self.clip_dim), jnp.float32)
    if clip_features.shape[-1] != self.clip_dim:
      raise ValueError(f"clip_features have {clip_features.shape[-1]} dims, the model expects "
                       f"clip_dim={self.clip_dim}")
    combined = jnp.concatenate([directional_feature, clip_features.astype(jnp.float32)], -1)

    def dense(features, name, fan_in):
      return nn.Dense(features, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_torch_init.kernel_init,
                      bias_init=_torch_init.bias_init(fan_in), name=name)

    fingerprint = dense(self.fingerprint_dim, "fusion_layer", combined.shape[-1])(combined)
    aux = {"features": fingerprint, "fingerprint": fingerprint}
    if not self.num_classes:
      return fingerprint, aux
    return Classifier(self.num_classes, tuple(self.hidden), name="nn_classifier")(fingerprint), aux


class Classifier(nn.Module):
  """The official SimpleNNClassifier: fc1, ReLU, fc2, ReLU, fc3 (float32)."""
  num_classes: int
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    sizes = tuple(self.hidden) + (self.num_classes,)
    for k, features in enumerate(sizes):
      x = nn.Dense(features, dtype=jnp.float32, param_dtype=jnp.float32,
                   kernel_init=_torch_init.kernel_init,
                   bias_init=_torch_init.bias_init(x.shape[-1]), name=f"fc{k + 1}")(x)
      if k < len(sizes) - 1:
        x = nn.relu(x)
    return x


# ---------------------------------------------------------------------------------------------
# Pretrained weights: the ResNet-50 stages start from torchvision's ImageNet weights.


def resnet_stage_names(stage_sizes: Sequence[int]) -> dict[str, tuple[str, tuple[str, ...]]]:
  """torchvision key of layer1..4 -> (collection, Flax path under `resnet`); no stem, no fc."""
  table = {}
  for key, (collection, path, _) in resnet._torchvision_keys(stage_sizes).items():
    if key.startswith("layer"):
      table[key] = (collection, path)
  return table


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "nn_classifier") -> dict[str, Any]:
  """`variables` with the layer1..layer4 weights of a torchvision-layout ResNet safetensors file
  (resnet50.tv_in1k, listed by iab_jax.models.resnet). Its stem and fc are not used: the DEFL
  levels and the 1x1 conv replace the stem, and the classifier here is the MLP."""
  state = _loading.read_safetensors(path, (
      "a torchvision-layout ResNet-50 safetensors file, e.g. model.safetensors of "
      "timm/resnet50.tv_in1k on Hugging Face"))
  stage_sizes = resnet._stage_sizes_of(variables["params"]["resnet"])
  converted = resnet.from_torchvision(state, stage_sizes=stage_sizes)
  flat = traverse_util.flatten_dict(converted)
  stages = {(c, "resnet", *p): v for (c, *p), v in flat.items() if p[0].startswith("layer")}
  collections = ("params", "batch_stats")
  target = {c: {"resnet": variables[c]["resnet"]} for c in collections}
  merged = _loading.merge(target, traverse_util.unflatten_dict(stages), path=os.fspath(path),
                          collections=collections)
  out = dict(variables)
  for c in collections:
    out[c] = {**variables[c], "resnet": merged[c]["resnet"]}
  return out


# The ResNet-50 file is resnet.CHECKPOINTS["resnet50.tv_in1k"] and the CLIP file
# clip_resnet.CHECKPOINTS["clip_rn50x16_openai"]; the authors' trained DEFL is imported with
# `python -m data_prep.import_official` (iab_jax.methods.defl.import_official).
CHECKPOINTS: dict[str, Any] = {}
PRETRAINED_FROM = ("resnet50.tv_in1k", "clip_rn50x16_openai")

HEAD = "nn_classifier"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
