"""OpenAI CLIP's modified ResNet image tower (RN50x16), used frozen as a feature extractor.

Li et al.'s MHF/DEFL attributors read features of CLIP RN50x16. The network differs from
torchvision's ResNet in three places, all reproduced here: a stem of three 3x3 convs followed by a
2x2 average pool instead of one 7x7 conv and a max pool; anti-aliased downsampling, where every
stride-2 step is a 2x2 average pool (after the 3x3 conv in the main branch, before the 1x1 conv in
the shortcut) and every conv has stride 1 except the stem's first; and a multi-head attention
pooling head whose query is the mean of the final map, with a learned position table, instead of a
global average pool. Batch norm follows torch (resnet.BatchNorm).

Names follow open_clip's `visual.*` keys of its ModifiedResNet, so `from_open_clip` is a rename
plus a transpose:

  open_clip (visual. ...)             Flax variables
  conv{1,2,3}.weight                  params/conv{1,2,3}/kernel (the stem)
  bn{1,2,3}.*                         {params,batch_stats}/bn{1,2,3}/* (the stem)
  layer2.0.conv1.weight               params/layer2_0/conv1/kernel
  layer2.0.downsample.0.weight        params/layer2_0/downsample_conv/kernel
  layer2.0.downsample.1.*             {params,batch_stats}/layer2_0/downsample_bn/*
  attnpool.positional_embedding       params/attnpool/positional_embedding
  attnpool.{q,k,v,c}_proj.*           params/attnpool/{q,k,v,c}_proj/{kernel,bias}

BN weight/bias map to scale/bias, running_mean/var to mean/var; num_batches_tracked is skipped.
`head` (a linear classifier on the pooled embedding, when num_classes > 0) is ours.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from iab_jax.models import _loading, _torch_init
from iab_jax.models.resnet import BatchNorm

_EXPANSION = 4  # bottleneck output channels = 4 * the stage's width

# torch's default init of nn.Conv2d and nn.Linear weights: kaiming_uniform_(a=sqrt(5)), i.e.
# uniform(+-1/sqrt(fan_in)); Flax's fan_in of an HWIO kernel is the same kh * kw * in.
_torch_default_kernel_init = _torch_init.kernel_init


_linear_bias_init = _torch_init.bias_init


def _conv(features: int, k: int, stride: int, pad: int, dtype: Any, name: str) -> nn.Conv:
  # Explicit torch paddings: Flax's "SAME" pads a stride-2 conv on the other side.
  return nn.Conv(features, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=_torch_default_kernel_init, name=name)


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
  """torch's AvgPool2d(size): stride = size, no padding, a remainder row/column dropped."""
  if size == 1:
    return x
  return nn.avg_pool(x, (size, size), strides=(size, size), padding="VALID")


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> (2x2 avg pool when strided) -> 1x1 expand, + shortcut; all convs stride 1."""
  width: int
  stride: int
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda name, scale_init=nn.initializers.ones: BatchNorm(
        use_running_average=not train, dtype=self.dtype, scale_init=scale_init, name=name)

    y = nn.relu(norm("bn1")(_conv(self.width, 1, 1, 0, self.dtype, "conv1")(x)))
    y = nn.relu(norm("bn2")(_conv(self.width, 3, 1, 1, self.dtype, "conv2")(y)))
    y = _avg_pool(y, self.stride)
    # open_clip zero-initialises every block's last BN scale, so a fresh block is the shortcut.
    y = norm("bn3", nn.initializers.zeros)(
        _conv(self.width * _EXPANSION, 1, 1, 0, self.dtype, "conv3")(y))

    shortcut = x
    if self.downsample:
      shortcut = _conv(self.width * _EXPANSION, 1, 1, 0, self.dtype, "downsample_conv")(
          _avg_pool(x, self.stride))
      shortcut = norm("downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


class AttentionPool(nn.Module):
  """CLIP's attention pooling: the map's mean token attends to itself and every position.

  Only the mean token's output is kept, so only its query is computed; the keys and values are
  those of all HW + 1 tokens, as in the reference.
  """
  grid: int  # image_size // 32: the position table covers grid * grid positions + the mean token
  heads: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    if (h, w) != (self.grid, self.grid):
      raise ValueError(
          f"the attention pool's position table is for a {self.grid}x{self.grid} final map "
          f"(input {32 * self.grid} px), got {h}x{w}: resize the input to {32 * self.grid} px")
    if c % self.heads:
      raise ValueError(f"{c} channels are not a multiple of heads {self.heads}")
    pos = self.param("positional_embedding", nn.initializers.normal(c**-0.5),
                     (self.grid * self.grid + 1, c), jnp.float32)
    tokens = x.reshape(n, h * w, c)
    mean = jnp.mean(tokens.astype(jnp.float32), axis=1, keepdims=True).astype(self.dtype)
    tokens = jnp.concatenate([mean, tokens], axis=1) + pos.astype(self.dtype)

    def proj(features: int, name: str) -> nn.Dense:
      return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32,
                      kernel_init=nn.initializers.normal(c**-0.5),  # open_clip's init_parameters
                      bias_init=_linear_bias_init(c), name=name)

    head_dim = c // self.heads
    q = proj(c, "q_proj")(tokens[:, :1]).reshape(n, 1, self.heads, head_dim)
    k = proj(c, "k_proj")(tokens).reshape(n, h * w + 1, self.heads, head_dim)
    v = proj(c, "v_proj")(tokens).reshape(n, h * w + 1, self.heads, head_dim)
    y = jax.nn.dot_product_attention(q, k, v, scale=head_dim**-0.5).reshape(n, c)
    return proj(self.embed_dim, "c_proj")(y)


class Model(nn.Module):
  """CLIP's modified ResNet; the defaults are OpenAI's RN50x16 (384 px, 768-d embedding).

  Input: (N, H, W, 3) float32 normalised with CLIP's mean/std, with H and W such that the final
  map is image_size // 32 square (H = W = image_size; the attention pool's position table is
  fixed). Returns (output, aux): output is the attention-pooled embedding (N, embed_dim) float32
  when num_classes == 0, else the logits of a linear head on it. aux: "features" and "embedding"
  (the embedding, float32) and "stages" (the outputs of layer1..layer4, NHWC, compute dtype).
  """
  num_classes: int = 0
  layers: Sequence[int] = (6, 8, 18, 8)
  width: int = 96
  embed_dim: int = 768
  heads: int = 48  # open_clip: width * 32 // 64, one head per 64 channels of the final map
  image_size: int = 384
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
    x = x.astype(self.dtype)
    x = nn.relu(norm("bn1")(_conv(self.width // 2, 3, 2, 1, self.dtype, "conv1")(x)))
    x = nn.relu(norm("bn2")(_conv(self.width // 2, 3, 1, 1, self.dtype, "conv2")(x)))
    x = nn.relu(norm("bn3")(_conv(self.width, 3, 1, 1, self.dtype, "conv3")(x)))
    x = _avg_pool(x, 2)

    stages = []
    in_features = self.width
    for i, num_blocks in enumerate(self.layers):
      width = self.width * 2**i
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        downsample = stride != 1 or in_features != width * _EXPANSION
        x = Bottleneck(width, stride, downsample, dtype=self.dtype,
                       name=f"layer{i + 1}_{j}")(x, train=train)
        in_features = width * _EXPANSION
      stages.append(x)

    embedding = AttentionPool(self.image_size // 32, self.heads, self.embed_dim, dtype=self.dtype,
                              name="attnpool")(x).astype(jnp.float32)
    aux = {"features": embedding, "embedding": embedding, "stages": stages}
    if self.num_classes <= 0:
      return embedding, aux
    # The head runs in float32 whatever the compute dtype: it is small, and its logits feed softmax.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_torch_default_kernel_init,
                      bias_init=_linear_bias_init(self.embed_dim), name="head")(embedding)
    return logits, aux


# ---------------------------------------------------------------------------------------------
# Public checkpoints.

CHECKPOINTS = {
    "clip_rn50x16_openai": dict(
        source="timm/resnet50x16_clip.openai",
        filename="open_clip_model.safetensors",
        layout="open_clip CLIP 'RN50x16' (visual.* keys of ModifiedResNet are used; the text tower "
               "is ignored)",
        arch=dict(layers=(6, 8, 18, 8), width=96, embed_dim=768, heads=48, image_size=384),
        preprocess="resize(384, method='bicubic')|central_crop(384)|normalize('clip')",
        notes="OpenAI's RN50x16 weights (open_clip pretrained tag 'openai', originally RN50x16.pt "
              "on openaipublic.azureedge.net), re-saved by timm for open_clip: 167,328,912 "
              "image-tower parameters and 193,920 BN statistics. The model only accepts 384 px "
              "inputs (fixed attention-pool position table).",
    ),
}


# ---------------------------------------------------------------------------------------------
# open_clip weights.

_BN_FIELDS = {  # torch name -> (collection, Flax name)
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _open_clip_keys(layers: Sequence[int]) -> dict[str, tuple[str, tuple[str, ...], str]]:
  """open_clip key -> (collection, Flax path, kind); kind "conv", "linear" or "copy"."""
  keys: dict[str, tuple[str, tuple[str, ...], str]] = {}

  def add_bn(torch_prefix: str, flax_path: tuple[str, ...]):
    for field, (collection, name) in _BN_FIELDS.items():
      keys[f"{torch_prefix}.{field}"] = (collection, flax_path + (name,), "copy")

  for k in (1, 2, 3):
    keys[f"visual.conv{k}.weight"] = ("params", (f"conv{k}", "kernel"), "conv")
    add_bn(f"visual.bn{k}", (f"bn{k}",))
  for i, num_blocks in enumerate(layers):
    for j in range(num_blocks):
      src, dst = f"visual.layer{i + 1}.{j}", f"layer{i + 1}_{j}"
      for k in (1, 2, 3):
        keys[f"{src}.conv{k}.weight"] = ("params", (dst, f"conv{k}", "kernel"), "conv")
        add_bn(f"{src}.bn{k}", (dst, f"bn{k}"))
      if j == 0:  # every stage's first block changes the width (layer1: width -> 4 * width)
        keys[f"{src}.downsample.0.weight"] = ("params", (dst, "downsample_conv", "kernel"), "conv")
        add_bn(f"{src}.downsample.1", (dst, "downsample_bn"))
  keys["visual.attnpool.positional_embedding"] = (
      "params", ("attnpool", "positional_embedding"), "copy")
  for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
    keys[f"visual.attnpool.{name}.weight"] = ("params", ("attnpool", name, "kernel"), "linear")
    keys[f"visual.attnpool.{name}.bias"] = ("params", ("attnpool", name, "bias"), "copy")
  return keys


def expected_shapes(*, layers: Sequence[int], width: int, embed_dim: int,
                    image_size: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  """(collection, *Flax path) -> shape of the image tower (no head) with this architecture."""
  shapes: dict[tuple[str, ...], tuple[int, ...]] = {}

  def conv(path, k, cin, cout):
    shapes[("params",) + path + ("kernel",)] = (k, k, cin, cout)

  def bn(path, c):
    for collection, name in _BN_FIELDS.values():
      shapes[(collection,) + path + (name,)] = (c,)

  conv(("conv1",), 3, 3, width // 2)
  bn(("bn1",), width // 2)
  conv(("conv2",), 3, width // 2, width // 2)
  bn(("bn2",), width // 2)
  conv(("conv3",), 3, width // 2, width)
  bn(("bn3",), width)
  cin = width
  for i, num_blocks in enumerate(layers):
    planes = width * 2**i
    for j in range(num_blocks):
      b = (f"layer{i + 1}_{j}",)
      conv(b + ("conv1",), 1, cin, planes)
      bn(b + ("bn1",), planes)
      conv(b + ("conv2",), 3, planes, planes)
      bn(b + ("bn2",), planes)
      conv(b + ("conv3",), 1, planes, planes * _EXPANSION)
      bn(b + ("bn3",), planes * _EXPANSION)
      if j == 0:
        conv(b + ("downsample_conv",), 1, cin, planes * _EXPANSION)
        bn(b + ("downsample_bn",), planes * _EXPANSION)
      cin = planes * _EXPANSION
  grid = image_size // 32
  shapes[("params", "attnpool", "positional_embedding")] = (grid * grid + 1, cin)
  for name, out in (("q_proj", cin), ("k_proj", cin), ("v_proj", cin), ("c_proj", embed_dim)):
    shapes[("params", "attnpool", name, "kernel")] = (cin, out)
    shapes[("params", "attnpool", name, "bias")] = (out,)
  return shapes


def _layers_of(names: Sequence[str], pattern: str) -> tuple[int, ...]:
  """Blocks per stage, read off names matching `pattern` (groups: stage, block)."""
  counts: dict[int, int] = {}
  for name in names:
    m = re.match(pattern, name)
    if m:
      stage, block = int(m.group(1)), int(m.group(2))
      counts[stage] = max(counts.get(stage, 0), block + 1)
  return tuple(counts.get(s, 0) for s in range(1, 5))


def from_open_clip(state: dict[str, np.ndarray], **arch: Any) -> dict[str, Any]:
  """open_clip CLIP state dict (visual.* of a ModifiedResNet) -> Flax {"params", "batch_stats"}.

  Keys outside visual.* (the text tower, logit_scale) and num_batches_tracked are ignored; any
  other missing or unexpected key is an error listing them. `arch` takes Model fields: layers,
  width, embed_dim and image_size are checked against the tensors when given (read off the
  tensors otherwise); the others do not change the weights and are ignored.
  """
  what = "open_clip ModifiedResNet state dict"
  vision = {k: v for k, v in state.items() if k.startswith("visual.")}
  layers = tuple(arch.get("layers") or _layers_of(list(vision), r"visual\.layer(\d)\.(\d+)\."))
  table = _open_clip_keys(layers)
  _loading.check_state_keys(vision, table, what)

  flat, source_of = {}, {}
  for key, (collection, path, kind) in table.items():
    value = np.asarray(vision[key], dtype=np.float32)
    want = {"conv": 4, "linear": 2}.get(kind)
    if want is not None and value.ndim != want:
      raise ValueError(f"{what}: {key}: expected a {want}-d {kind} weight, got shape {value.shape}")
    if kind == "conv":
      value = _loading.conv_kernel(value)
    elif kind == "linear":
      value = _loading.dense_kernel(value)
    flat[(collection,) + path] = np.ascontiguousarray(value)
    source_of[(collection,) + path] = key

  def dim(path, axis):  # 0 for a scalar: the shape check below then names the key
    shape = flat[path].shape
    return shape[axis] if shape else 0

  pos_rows = dim(("params", "attnpool", "positional_embedding"), 0)
  inferred = dict(layers=layers, width=dim(("params", "conv3", "kernel"), -1),
                  embed_dim=dim(("params", "attnpool", "c_proj", "kernel"), -1),
                  image_size=32 * math.isqrt(max(pos_rows - 1, 0)))
  given = {k: (tuple(arch[k]) if k == "layers" else arch[k]) for k in inferred
           if arch.get(k) is not None}
  full = {**inferred, **given}
  for path, shape in expected_shapes(**full).items():
    if flat[path].shape != shape:
      raise ValueError(f"{what}: {source_of[path]} -> {'/'.join(path)} has shape "
                       f"{flat[path].shape} in Flax layout, expected {shape} for "
                       + ", ".join(f"{k}={v}" for k, v in full.items()))
  return traverse_util.unflatten_dict(flat)


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "head") -> dict[str, Any]:
  """Returns `variables` with open_clip RN50x16-layout weights from a safetensors file.

  `variables` is the Model's {"params", "batch_stats"} (arrays, or jax.ShapeDtypeStructs from
  jax.eval_shape for every leaf but the head). No checkpoint has a classifier on the embedding, so
  the params named `head` stay as initialised. Any other key or shape difference is an error.
  """
  expected = ("an open_clip-layout CLIP ModifiedResNet safetensors file, e.g. "
              "open_clip_model.safetensors of timm/resnet50x16_clip.openai on Hugging Face")
  state = _loading.read_safetensors(path, expected)
  params = variables["params"]
  layers = _layers_of(list(params), r"layer(\d)_(\d+)$")
  converted = from_open_clip(state, layers=layers)
  # No public CLIP file has a classifier: merge keeps the model's head as initialised.
  return _loading.merge(variables, converted, path=os.fspath(path), head=head)


HEAD = "head"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
