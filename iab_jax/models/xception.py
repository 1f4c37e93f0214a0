"""Xception as timm's `legacy_xception` (Cadene's port of Chollet's Keras model), in Flax Linen.

Two of the benchmark's methods start from this network: PatchForensics cuts it after an early
block (block 2 in the paper) and classifies every position of that feature map with its own 1x1
conv, and UCF uses the full network as its encoder. Both load the ImageNet weights that timm ships
as legacy_xception.tf_in1k, so the layout follows that state dict to the letter: unpadded 3x3
stem convs, separable convs made of a depthwise 3x3 (padding 1, feature_group_count = channels)
and a pointwise 1x1, no conv biases, torch's BatchNorm (eps 1e-5, momentum 0.1), a stride-2 max
pool with -inf padding closing each downsampling block, and a 1x1 strided projection shortcut
wherever a block changes width or stride. A block's output is the residual sum itself; the ReLU
that follows it belongs to the next block (block 1 starts without one, the stem ends with one).

`truncate_after="blockK"` builds only the stem and blocks 1..K; the model then returns that
block's output map, as PatchForensics reads it.

Names follow timm's keys; `from_timm` renames and transposes:

  timm legacy_xception                    Flax variables
  conv1.weight (O, I, kh, kw)             params/conv1/kernel (kh, kw, I, O)
  bn1.weight / bias                       params/bn1/scale / bias
  bn1.running_mean / running_var          batch_stats/bn1/mean / var
  blockN.rep.R.conv1.weight (C, 1, 3, 3)  params/blockN/sepK/depthwise/kernel (3, 3, 1, C)
  blockN.rep.R.pointwise.weight           params/blockN/sepK/pointwise/kernel
  blockN.rep.R+1.*                        {params,batch_stats}/blockN/bnK/*
  blockN.skip.weight / skipbn.*           params/blockN/skip/kernel, {..}/blockN/skipbn/*
  conv3.conv1.weight / conv3.pointwise.*  params/conv3/depthwise/kernel, params/conv3/pointwise/..
  fc.weight (out, in) / fc.bias           params/fc/kernel (in, out) / bias

where sepK is the K-th separable conv of the block (1-based) and R its index in timm's `rep`
Sequential, which interleaves ReLUs: R = 3K - 2 when the block starts with a ReLU, 3K - 3 for
block 1, which does not.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading, _torch_init
from iab_jax.models.resnet import BatchNorm

# (in channels, out channels, separable convs, stride, starts with ReLU, widens first) of
# block1..block12: the entry flow, eight identical middle-flow blocks, the exit block.
_BLOCKS = (
    (64, 128, 2, 2, False, True),
    (128, 256, 2, 2, True, True),
    (256, 728, 2, 2, True, True),
    *[(728, 728, 3, 1, True, True)] * 8,
    (728, 1024, 2, 2, True, False),
)
BLOCK_NAMES = tuple(f"block{i}" for i in range(1, len(_BLOCKS) + 1))
NUM_FEATURES = 2048

# timm's init: kaiming_normal_(mode="fan_out", nonlinearity="relu") on every conv, depthwise ones
# included (torch's fan_out of a (C, 1, 3, 3) weight is 9C, as Flax's of a (3, 3, 1, C) kernel).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# nn.Linear's default: uniform(+-1/sqrt(fan_in)) for the weight (kaiming_uniform_(a=sqrt(5))).
_fc_kernel_init = _torch_init.kernel_init


_fc_bias_init = _torch_init.bias_init


def _sep_widths(in_ch: int, out_ch: int, reps: int, grow_first: bool) -> list[int]:
  """Output widths of a block's separable convs: widen on the first, or else on the last."""
  if grow_first:
    return [out_ch] * reps
  return [in_ch] * (reps - 1) + [out_ch]


def _rep_index(k: int, start_with_relu: bool) -> int:
  """Index in timm's `rep` Sequential of the k-th (1-based) separable conv of a block."""
  return 3 * k - 2 if start_with_relu else 3 * k - 3


def depthwise_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A depthwise 3x3 convolution (padding 1, stride 1) as nine shifted products.

  kernel (3, 3, 1, C), as Flax's grouped conv holds it. The same numbers as
  lax.conv_general_dilated(feature_group_count=C), but XLA's CPU backend runs grouped
  convolutions ~10x slower (forward) and ~4x slower (backward) than these element-wise ops at
  small sizes (at 256x256 the grouped convolution wins again).
  """
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = padded[:, :h, :w, :] * kernel[0, 0, 0]
  for i in range(3):
    for j in range(3):
      if i or j:
        out = out + padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
  return out


def max_pool3x3(x: jax.Array, stride: int) -> jax.Array:
  """torch's MaxPool2d(3, stride, padding=1) (-inf padding) as the maximum of nine strided
  slices: the same values as nn.max_pool, whose gradient (select-and-scatter) is slow on CPU."""
  h, w = x.shape[1:3]
  out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      window = padded[:, i:i + stride * (out_h - 1) + 1:stride,
                      j:j + stride * (out_w - 1) + 1:stride, :]
      out = window if out is None else jnp.maximum(out, window)
  return out


class _ShiftedDepthwise(nn.Module):
  """The grouped nn.Conv's kernel (3, 3, 1, C), same name and init, applied by
  depthwise_conv3x3."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _conv_init, (3, 3, 1, x.shape[-1]), jnp.float32)
    return depthwise_conv3x3(x, kernel.astype(self.dtype))


class SeparableConv(nn.Module):
  """Depthwise 3x3 (padding 1) then pointwise 1x1, both without bias, as timm's SeparableConv2d.

  shifted_ops: the depthwise conv as nine shifted products (depthwise_conv3x3): the same
  variables and numbers, faster on CPU at small sizes.
  """
  features: int
  dtype: Any = jnp.float32
  shifted_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if self.shifted_ops:
      x = _ShiftedDepthwise(dtype=self.dtype, name="depthwise")(x)
    else:
      x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=channels,
                  use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=_conv_init, name="depthwise")(x)
    return nn.Conv(self.features, (1, 1), padding="VALID", use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32, kernel_init=_conv_init, name="pointwise")(x)


class Block(nn.Module):
  """[ReLU] SepConv BN (ReLU SepConv BN)... [max pool 3/2], plus the (projected) input."""
  in_features: int
  out_features: int
  reps: int
  stride: int
  start_with_relu: bool
  grow_first: bool
  dtype: Any = jnp.float32
  shifted_ops: bool = False  # depthwise convs and max pool as shifted slices (see above)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
    y = x
    widths = _sep_widths(self.in_features, self.out_features, self.reps, self.grow_first)
    for k, width in enumerate(widths, start=1):
      if k > 1 or self.start_with_relu:
        y = nn.relu(y)
      y = SeparableConv(width, dtype=self.dtype, shifted_ops=self.shifted_ops,
                        name=f"sep{k}")(y)
      y = norm(f"bn{k}")(y)
    if self.stride != 1:
      if self.shifted_ops:
        y = max_pool3x3(y, self.stride)
      else:
        # torch's MaxPool2d(3, stride, padding=1) pads with -inf, as Flax's max_pool does.
        y = nn.max_pool(y, (3, 3), strides=(self.stride, self.stride),
                        padding=((1, 1), (1, 1)))

    shortcut = x
    if self.in_features != self.out_features or self.stride != 1:
      shortcut = nn.Conv(self.out_features, (1, 1), (self.stride, self.stride), padding="VALID",
                         use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=_conv_init, name="skip")(x)
      shortcut = norm("skipbn")(shortcut)
    return y + shortcut


class Model(nn.Module):
  """timm's legacy_xception, whole or cut after a block.

  Input: (N, H, W, 3) float32 normalised with mean = std = 0.5; H, W >= 7 (the stem's two
  unpadded convs; 299 for the ImageNet weights).

  Whole network (truncate_after=None): returns (logits (N, num_classes) float32, or with
  num_classes=0 the pooled feature (N, 2048) float32, aux). aux["features"] is the pooled feature
  after the final ReLU (timm's pre-logits); aux["stages"] the 12 block outputs (compute dtype);
  aux["feature_map"] the final (N, h, w, 2048) map after the ReLU (timm's forward_features) and
  aux["feature_map_preact"] the same before it (bn4's output, what DeepfakeBench's
  Xception.features() returns to UCF).

  Truncated (truncate_after="block1".."block12", num_classes must be 0): no layer after that block
  is built; returns (that block's output map (N, h, w, C) float32, aux) with aux["feature_map"]
  that map, aux["stages"] the outputs of blocks 1..K and aux["features"] the map's spatial mean.
  """
  num_classes: int
  truncate_after: str | None = None
  dtype: Any = jnp.float32
  # The blocks' depthwise convs and max pools as shifted slices: the same variables and
  # numbers, several times faster on XLA's CPU backend at small sizes (PatchForensics).
  shifted_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    if self.truncate_after is not None:
      if self.truncate_after not in BLOCK_NAMES:
        raise ValueError(f"truncate_after={self.truncate_after!r} is not a block of Xception; "
                         f"use one of {', '.join(BLOCK_NAMES)} or None")
      if self.num_classes:
        raise ValueError(f"an Xception truncated after {self.truncate_after} has no "
                         f"classification head: num_classes must be 0, got {self.num_classes}")
    conv = lambda f, s, name: nn.Conv(
        f, (3, 3), (s, s), padding="VALID", use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=_conv_init, name=name)
    norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)

    x = x.astype(self.dtype)
    x = nn.relu(norm("bn1")(conv(32, 2, "conv1")(x)))
    x = nn.relu(norm("bn2")(conv(64, 1, "conv2")(x)))

    stages = []
    for name, spec in zip(BLOCK_NAMES, _BLOCKS):
      x = Block(*spec, dtype=self.dtype, shifted_ops=self.shifted_ops, name=name)(x,
                                                                                 train=train)
      stages.append(x)
      if name == self.truncate_after:
        feature_map = x.astype(jnp.float32)
        features = jnp.mean(feature_map, axis=(1, 2))
        return feature_map, {"features": features, "stages": stages, "feature_map": feature_map}

    sep = lambda f, name: SeparableConv(f, dtype=self.dtype, shifted_ops=self.shifted_ops,
                                        name=name)
    x = nn.relu(norm("bn3")(sep(1536, "conv3")(x)))
    preact = norm("bn4")(sep(NUM_FEATURES, "conv4")(x))
    x = nn.relu(preact)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    aux = {"features": features, "stages": stages, "feature_map": x,
           "feature_map_preact": preact}
    if not self.num_classes:
      return features, aux
    # The head runs in float32 whatever the compute dtype: it is small and feeds a softmax.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_fc_kernel_init, bias_init=_fc_bias_init(NUM_FEATURES),
                      name="fc")(features)
    return logits, aux


# ---------------------------------------------------------------------------------------------
# timm weights.

# A preprocessing spec in iab_jax.data.transforms ops: timm's eval transform for the checkpoint
# (bicubic resize of the shorter side to int(299 / crop_pct 0.8975) = 333, centre crop 299).
_PREPROCESS = "resize(333, method='bicubic')|central_crop(299)|normalize('half')"

CHECKPOINTS = {
    "legacy_xception.tf_in1k": dict(
        source="timm/legacy_xception.tf_in1k",
        filename="model.safetensors",
        layout="timm legacy_xception",
        arch=dict(),
        preprocess=_PREPROCESS,
        notes=("ImageNet-1k weights of Chollet's Keras Xception as ported by Cadene "
               "(xception-43020ad28.pth, top-1 78.9%); PatchForensics and UCF/DeepfakeBench start "
               "from these. timm 1.0's pretrained config for this tag downloads the pickle "
               "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
               "xception-43020ad28.pth rather than a Hugging Face file: where the Hugging Face "
               "repo is not available, convert that .pth with torch.load + "
               "safetensors.torch.save_file (same keys). PatchForensics builds "
               "Model(num_classes=0, truncate_after='block2')."),
    ),
}

_BN_FIELDS = {  # torch name -> (collection, Flax name)
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}

# kind -> how a torch tensor becomes a Flax leaf. "pointwise" also takes (out, in) matrices: the
# FaceForensics/DeepfakeBench copies of Cadene's weights store pointwise convs that way.
_KINDS = ("conv", "pointwise", "linear", "vector")


def _timm_table(num_classes: int | None) -> dict[str, tuple[str, tuple[str, ...], str, tuple]]:
  """torch key -> (collection, Flax path, kind, torch shape) for the whole legacy_xception.

  With num_classes None the fc is left out of the table (its size is not known here).
  """
  table = {}

  def add_bn(prefix: str, path: tuple[str, ...], c: int):
    for field, (collection, name) in _BN_FIELDS.items():
      table[f"{prefix}.{field}"] = (collection, path + (name,), "vector", (c,))

  def add_sep(prefix: str, path: tuple[str, ...], c_in: int, c_out: int):
    table[f"{prefix}.conv1.weight"] = (
        "params", path + ("depthwise", "kernel"), "conv", (c_in, 1, 3, 3))
    table[f"{prefix}.pointwise.weight"] = (
        "params", path + ("pointwise", "kernel"), "pointwise", (c_out, c_in, 1, 1))

  table["conv1.weight"] = ("params", ("conv1", "kernel"), "conv", (32, 3, 3, 3))
  add_bn("bn1", ("bn1",), 32)
  table["conv2.weight"] = ("params", ("conv2", "kernel"), "conv", (64, 32, 3, 3))
  add_bn("bn2", ("bn2",), 64)
  for name, (c_in, c_out, reps, stride, start_with_relu, grow_first) in zip(BLOCK_NAMES, _BLOCKS):
    width = c_in
    for k, out in enumerate(_sep_widths(c_in, c_out, reps, grow_first), start=1):
      r = _rep_index(k, start_with_relu)
      add_sep(f"{name}.rep.{r}", (name, f"sep{k}"), width, out)
      add_bn(f"{name}.rep.{r + 1}", (name, f"bn{k}"), out)
      width = out
    if c_in != c_out or stride != 1:
      table[f"{name}.skip.weight"] = ("params", (name, "skip", "kernel"), "conv",
                                      (c_out, c_in, 1, 1))
      add_bn(f"{name}.skipbn", (name, "skipbn"), c_out)
  add_sep("conv3", ("conv3",), 1024, 1536)
  add_bn("bn3", ("bn3",), 1536)
  add_sep("conv4", ("conv4",), 1536, NUM_FEATURES)
  add_bn("bn4", ("bn4",), NUM_FEATURES)
  if num_classes is not None:
    table["fc.weight"] = ("params", ("fc", "kernel"), "linear", (num_classes, NUM_FEATURES))
    table["fc.bias"] = ("params", ("fc", "bias"), "vector", (num_classes,))
  return table


def _kept_modules(truncate_after: str | None, with_head: bool) -> set[str]:
  """Top-level Flax module names of a Model with this truncation (and fc when with_head)."""
  blocks = BLOCK_NAMES if truncate_after is None else (
      BLOCK_NAMES[:BLOCK_NAMES.index(truncate_after) + 1])
  kept = {"conv1", "bn1", "conv2", "bn2", *blocks}
  if truncate_after is None:
    kept |= {"conv3", "bn3", "conv4", "bn4"} | ({"fc"} if with_head else set())
  return kept


def from_timm(state: dict[str, np.ndarray], *, num_classes: int | None = None,
              truncate_after: str | None = None) -> dict[str, Any]:
  """Maps a timm legacy_xception state dict (numpy arrays) to Flax {"params", "batch_stats"}.

  The state dict must be a whole network (the fc may be absent, as in timm's num_classes=0);
  `num_batches_tracked` buffers are ignored. `truncate_after` keeps only the stem and the blocks up
  to that one, for Model(truncate_after=...). num_classes: None takes the file's fc whatever its
  size (if it has one), 0 drops it, n > 0 requires an fc over n classes. Missing or unexpected
  keys and tensors of the wrong shape are errors naming them.
  """
  if truncate_after is not None and truncate_after not in BLOCK_NAMES:
    raise ValueError(f"truncate_after={truncate_after!r} is not one of {', '.join(BLOCK_NAMES)}")
  if truncate_after is not None and num_classes:
    raise ValueError(f"an Xception truncated after {truncate_after} has no head: num_classes "
                     f"must be 0 or None, got {num_classes}")
  has_fc = "fc.weight" in state or "fc.bias" in state
  file_classes = None
  if has_fc:
    w = np.asarray(state.get("fc.weight", np.zeros((0, 0))))
    file_classes = w.shape[0] if w.ndim == 2 else -1
  table = _timm_table(None)
  if has_fc:
    table.update({k: v for k, v in _timm_table(file_classes).items() if k.startswith("fc.")})
  _loading.check_state_keys(state, table, "state dict is not a timm legacy_xception")

  with_head = truncate_after is None and num_classes != 0
  if num_classes and file_classes != num_classes:
    got = f"an fc over {file_classes} classes" if has_fc else "no fc"
    raise ValueError(f"the state dict has {got}, expected num_classes={num_classes}")
  kept = _kept_modules(truncate_after, with_head)

  flat = {}
  for key, (collection, path, kind, shape) in table.items():
    if path[0] not in kept:
      continue
    value = np.asarray(state[key], dtype=np.float32)
    if kind == "pointwise" and value.shape == shape[:2]:
      value = value[:, :, None, None]
    if value.shape != shape:
      raise ValueError(f"{key}: expected shape {shape} in legacy_xception, got {value.shape}")
    if kind in ("conv", "pointwise"):
      value = _loading.conv_kernel(value)
    elif kind == "linear":
      value = _loading.dense_kernel(value)
    flat[(collection,) + path] = np.ascontiguousarray(value)
  return traverse_util.unflatten_dict(flat)


def _truncation_of(params: dict[str, Any]) -> str | None:
  """Reads truncate_after off a Model's params: None when the exit flow (conv3) is there."""
  blocks = sorted(int(m.group(1)) for name in params
                  if (m := re.fullmatch(r"block(\d+)", name)))
  if not blocks or blocks != list(range(1, len(blocks) + 1)) or "conv1" not in params:
    raise ValueError(f"not an Xception params tree (top-level names: {sorted(params)})")
  return None if "conv3" in params else f"block{blocks[-1]}"


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "fc") -> dict[str, Any]:
  """Returns `variables` with timm legacy_xception weights from a safetensors file.

  `variables` is a Model's {"params", "batch_stats"} (arrays, or jax.ShapeDtypeStructs from
  jax.eval_shape): whole or truncated, with or without a head; the file is always the whole
  network. The file's fc goes to the params named `head`, kept as initialised when their shape
  differs (an attribution head over the benchmark's classes instead of ImageNet's 1000).
  """
  state = _loading.read_safetensors(
      path, "a timm legacy_xception state dict in safetensors, e.g. model.safetensors of "
      "timm/legacy_xception.tf_in1k on Hugging Face, or timm's xception-43020ad28.pth "
      "(github.com/rwightman/pytorch-image-models/releases/tag/v0.1-cadene) converted with "
      "torch.load + safetensors.torch.save_file")
  params = variables["params"]
  truncate_after = _truncation_of(params)
  with_head = head in params
  converted = from_timm(state, truncate_after=truncate_after,
                        num_classes=None if with_head else 0)
  if with_head and head != "fc" and "fc" in converted["params"]:
    converted["params"][head] = converted["params"].pop("fc")
  return _loading.merge(variables, converted, path=os.fspath(path),
                        head=head if with_head else None)


HEAD = "fc"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
