"""ConvNeXt as timm builds it (defaults: convnext_small), in Flax Linen.

Omni-DFA fine-tunes an ImageNet ConvNeXt-Small, so the network is timm's `ConvNeXt` with its
default options, checkpoint for checkpoint: a 4x4 stride-4 patch stem with bias followed by a
LayerNorm over channels; four stages, each after the first opened by LayerNorm + a 2x2 stride-2
conv; blocks of depthwise 7x7 conv (padding 3, with bias) -> LayerNorm -> Linear 4x -> exact
(erf) GELU -> Linear -> per-channel layer scale `gamma`, added to the block's input through
stochastic depth; and a head that average-pools, applies a LayerNorm, then the classifier (pool
before norm, the original ConvNeXt order). Every LayerNorm has eps 1e-6 (not torch's 1e-5) and
takes its variance in two passes like torch. Stochastic depth rates grow linearly over all
blocks from 0 to `drop_path_rate` (timm's schedule) and act only with train=True, drawing from
the "dropout" rng.

Names follow timm's keys; `from_timm` renames and transposes:

  timm ConvNeXt                           Flax variables
  stem.0.weight (O, I, 4, 4) / bias       params/stem_conv/kernel (4, 4, I, O) / bias
  stem.1.weight / bias                    params/stem_norm/scale / bias
  stages.i.downsample.0.weight / bias     params/stage{i}_downsample_norm/scale / bias
  stages.i.downsample.1.weight / bias     params/stage{i}_downsample_conv/kernel / bias
  stages.i.blocks.j.conv_dw.weight        params/stage{i}_block{j}/conv_dw/kernel (7, 7, 1, C)
  stages.i.blocks.j.norm.weight / bias    params/stage{i}_block{j}/norm/scale / bias
  stages.i.blocks.j.mlp.fc1.weight (4C, C) params/stage{i}_block{j}/fc1/kernel (C, 4C)
  stages.i.blocks.j.mlp.fc2.*             params/stage{i}_block{j}/fc2/*
  stages.i.blocks.j.gamma (C,)            params/stage{i}_block{j}/gamma
  head.norm.weight / bias                 params/head_norm/scale / bias
  head.fc.weight (out, in) / bias         params/head_fc/kernel (in, out) / bias

with i and j timm's 0-based indices.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading

LN_EPS = 1e-6
# timm's init: trunc_normal_(std=0.02) cut at +-2 in absolute value, i.e. at 100 standard
# deviations: an untruncated normal in effect. Biases zero.
_weight_init = nn.initializers.normal(0.02)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  # use_fast_variance=False: E[x^2] - E[x]^2 loses digits where the mean is large against the
  # spread, e.g. right after the stem; torch subtracts the mean first.
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
  """Each block's stochastic depth rate, by stage: timm's schedule, linear in the block's index
  over the whole network from 0 (first block) to drop_path_rate (last block)."""
  rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
  bounds = np.cumsum([0, *depths]).tolist()
  return [rates[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class DropPath(nn.Module):
  """Stochastic depth: zeroes a sample's whole residual branch with probability `rate`.

  The survivors are scaled by 1 / (1 - rate) so that the expectation is unchanged (timm's
  scale_by_keep). Identity unless train and rate > 0; then it draws from the "dropout" rng.
  """
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    if keep <= 0.0:
      return jnp.zeros_like(x)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


class Block(nn.Module):
  """Depthwise 7x7 -> LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale, + input."""
  features: int
  drop_path: float = 0.0
  ls_init_value: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = self.features
    y = nn.Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c, dtype=self.dtype,
                param_dtype=jnp.float32, kernel_init=_weight_init, name="conv_dw")(x)
    y = _layer_norm(self.dtype, "norm")(y)
    y = nn.Dense(4 * c, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_weight_init,
                 name="fc1")(y)
    # torch's nn.GELU is the exact, erf-based one; jax.nn.gelu defaults to the tanh approximation.
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_weight_init,
                 name="fc2")(y)
    gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value), (c,), jnp.float32)
    y = y * gamma.astype(self.dtype)
    return x + DropPath(self.drop_path, name="drop_path")(y, train=train)


class Model(nn.Module):
  """timm's ConvNeXt with the patch stem and the pool -> norm -> fc head; defaults convnext_small.

  Input: (N, H, W, 3) float32 normalised with ImageNet's mean/std; H, W >= 32 (any size: the stem
  and the downsampling convs floor as torch's do). Returns (logits (N, num_classes) float32, or
  with num_classes=0 the normed pooled feature (N, dims[-1]) float32, aux): aux["features"] is
  that feature (timm's pre-logits, head.norm of the average pool), aux["stages"] the four stage
  outputs (N, h, w, dims[i]) in the compute dtype.

  Training with drop_path_rate > 0 needs rngs={"dropout": key}.
  """
  num_classes: int
  depths: Sequence[int] = (3, 3, 27, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  drop_path_rate: float = 0.0
  ls_init_value: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    if len(self.depths) != len(self.dims):
      raise ValueError(f"depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length")
    conv = lambda f, k, name: nn.Conv(
        f, (k, k), (k, k), padding="VALID", dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=_weight_init, name=name)
    rates = drop_path_rates(self.drop_path_rate, self.depths)

    x = x.astype(self.dtype)
    x = _layer_norm(self.dtype, "stem_norm")(conv(self.dims[0], 4, "stem_conv")(x))
    stages = []
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = _layer_norm(self.dtype, f"stage{i}_downsample_norm")(x)
        x = conv(dim, 2, f"stage{i}_downsample_conv")(x)
      for j in range(depth):
        x = Block(dim, drop_path=rates[i][j], ls_init_value=self.ls_init_value,
                  dtype=self.dtype, name=f"stage{i}_block{j}")(x, train=train)
      stages.append(x)

    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # The head runs in float32 whatever the compute dtype: it is small and feeds a softmax.
    features = _layer_norm(jnp.float32, "head_norm")(pooled)
    aux = {"features": features, "stages": stages}
    if not self.num_classes:
      return features, aux
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_weight_init, name="head_fc")(features)
    return logits, aux


# ---------------------------------------------------------------------------------------------
# timm weights.

# timm's eval transform for these checkpoints: bicubic resize of the shorter side to
# int(224 / crop_pct 0.875) = 256, centre crop 224, ImageNet mean/std.
_PREPROCESS = "resize(256, method='bicubic')|central_crop(224)|normalize('imagenet')"

CHECKPOINTS = {
    "convnext_small.fb_in1k": dict(
        source="timm/convnext_small.fb_in1k",
        filename="model.safetensors",
        layout="timm convnext_small",
        arch=dict(),
        preprocess=_PREPROCESS,
        notes=("Facebook's ConvNeXt-S trained on ImageNet-1k (EMA weights, "
               "convnext_small_1k_224_ema.pth, top-1 83.1%): the plain 'pretrained on ImageNet' "
               "reading of Omni-DFA's backbone."),
    ),
    "convnext_small.fb_in22k_ft_in1k": dict(
        source="timm/convnext_small.fb_in22k_ft_in1k",
        filename="model.safetensors",
        layout="timm convnext_small",
        arch=dict(),
        preprocess=_PREPROCESS,
        notes=("Facebook's ConvNeXt-S pre-trained on ImageNet-22k and fine-tuned on ImageNet-1k "
               "at 224 (convnext_small_22k_1k_224.pth, top-1 84.6%); the alternative if Omni-DFA's "
               "code turns out to start from the 22k weights."),
    ),
}

_LN_FIELDS = {"weight": "scale", "bias": "bias"}


def _timm_table(depths: Sequence[int], dims: Sequence[int], num_classes: int | None
                ) -> dict[str, tuple[tuple[str, ...], str, tuple]]:
  """torch key -> (Flax params path, kind, torch shape); no fc when num_classes is None."""
  table = {}

  def add_ln(prefix: str, name: str, c: int):
    for field, flax_name in _LN_FIELDS.items():
      table[f"{prefix}.{field}"] = ((name, flax_name), "vector", (c,))

  def add_conv(prefix: str, path: tuple[str, ...], shape: tuple[int, ...]):
    table[f"{prefix}.weight"] = (path + ("kernel",), "conv", shape)
    table[f"{prefix}.bias"] = (path + ("bias",), "vector", shape[:1])

  def add_linear(prefix: str, path: tuple[str, ...], out: int, inp: int):
    table[f"{prefix}.weight"] = (path + ("kernel",), "linear", (out, inp))
    table[f"{prefix}.bias"] = (path + ("bias",), "vector", (out,))

  add_conv("stem.0", ("stem_conv",), (dims[0], 3, 4, 4))
  add_ln("stem.1", "stem_norm", dims[0])
  for i, (depth, dim) in enumerate(zip(depths, dims)):
    if i > 0:
      add_ln(f"stages.{i}.downsample.0", f"stage{i}_downsample_norm", dims[i - 1])
      add_conv(f"stages.{i}.downsample.1", (f"stage{i}_downsample_conv",),
               (dim, dims[i - 1], 2, 2))
    for j in range(depth):
      prefix, block = f"stages.{i}.blocks.{j}", f"stage{i}_block{j}"
      add_conv(f"{prefix}.conv_dw", (block, "conv_dw"), (dim, 1, 7, 7))
      for field, flax_name in _LN_FIELDS.items():
        table[f"{prefix}.norm.{field}"] = ((block, "norm", flax_name), "vector", (dim,))
      add_linear(f"{prefix}.mlp.fc1", (block, "fc1"), 4 * dim, dim)
      add_linear(f"{prefix}.mlp.fc2", (block, "fc2"), dim, 4 * dim)
      table[f"{prefix}.gamma"] = ((block, "gamma"), "vector", (dim,))
  add_ln("head.norm", "head_norm", dims[-1])
  if num_classes is not None:
    add_linear("head.fc", ("head_fc",), num_classes, dims[-1])
  return table


def from_timm(state: dict[str, np.ndarray], *, num_classes: int | None = None,
              depths: Sequence[int] = (3, 3, 27, 3),
              dims: Sequence[int] = (96, 192, 384, 768)) -> dict[str, Any]:
  """Maps a timm ConvNeXt state dict (numpy arrays) to Flax {"params": ...}.

  The head's fc may be absent (timm's num_classes=0). num_classes: None takes the file's fc
  whatever its size, 0 drops it, n > 0 requires an fc over n classes. Missing or unexpected keys
  (a checkpoint of another depth shows up here) and tensors of the wrong shape are errors naming
  them.
  """
  has_fc = "head.fc.weight" in state or "head.fc.bias" in state
  file_classes = None
  if has_fc:
    w = np.asarray(state.get("head.fc.weight", np.zeros((0, 0))))
    file_classes = w.shape[0] if w.ndim == 2 else -1
  table = _timm_table(depths, dims, file_classes)
  _loading.check_state_keys(
      state, table, f"state dict is not a timm ConvNeXt with depths {tuple(depths)}")
  if num_classes and file_classes != num_classes:
    got = f"an fc over {file_classes} classes" if has_fc else "no head.fc"
    raise ValueError(f"the state dict has {got}, expected num_classes={num_classes}")

  flat = {}
  for key, (path, kind, shape) in table.items():
    if path[0] == "head_fc" and num_classes == 0:
      continue
    value = np.asarray(state[key], dtype=np.float32)
    if value.shape != shape:
      raise ValueError(f"{key}: expected shape {shape} for depths {tuple(depths)}, dims "
                       f"{tuple(dims)}, got {value.shape}")
    if kind == "conv":
      value = _loading.conv_kernel(value)
    elif kind == "linear":
      value = _loading.dense_kernel(value)
    flat[("params",) + path] = np.ascontiguousarray(value)
  return traverse_util.unflatten_dict(flat)


def _arch_of(params: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Reads (depths, dims) off a Model's params: the stage{i}_block{j} names and gamma widths."""
  depths: dict[int, int] = {}
  for name in params:
    if m := re.fullmatch(r"stage(\d+)_block(\d+)", name):
      i = int(m.group(1))
      depths[i] = max(depths.get(i, 0), int(m.group(2)) + 1)
  if not depths or sorted(depths) != list(range(len(depths))) or "stem_conv" not in params:
    raise ValueError(f"not a ConvNeXt params tree (top-level names: {sorted(params)})")
  dims = tuple(int(params[f"stage{i}_block0"]["gamma"].shape[0]) for i in sorted(depths))
  return tuple(depths[i] for i in sorted(depths)), dims


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "head_fc") -> dict[str, Any]:
  """Returns `variables` with timm ConvNeXt weights from a safetensors file.

  `variables` is a Model's {"params"} (arrays, or jax.ShapeDtypeStructs from jax.eval_shape); its
  depths and widths are read off the tree. The file's head.fc goes to the params named `head`,
  kept as initialised when their shape differs (an attribution head over the benchmark's classes
  instead of ImageNet's 1000); a model without a head (num_classes=0) ignores it. head.norm is
  always loaded.
  """
  state = _loading.read_safetensors(
      path, "a timm ConvNeXt state dict in safetensors, e.g. model.safetensors of "
      "timm/convnext_small.fb_in1k or timm/convnext_small.fb_in22k_ft_in1k on Hugging Face")
  params = variables["params"]
  depths, dims = _arch_of(params)
  with_head = head in params
  converted = from_timm(state, depths=depths, dims=dims, num_classes=None if with_head else 0)
  if with_head and head != "head_fc" and "head_fc" in converted["params"]:
    converted["params"][head] = converted["params"].pop("head_fc")
  return _loading.merge(variables, converted, path=os.fspath(path),
                        head=head if with_head else None, collections=("params",))


HEAD = "head_fc"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
