"""VGG-16 (configuration D, no batch norm) laid out exactly like torchvision's, in Flax Linen.

The benchmark uses VGG-16 for perceptual losses (LPIPS and feature-matching terms), which read the
activations after the last ReLU of each stage: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3. The
ImageNet classifier (adaptive 7x7 average pool, fc6, fc7, fc8 with dropout) is here too so that the
whole torchvision model, and its weights, can be used. torch's 3x3 convs pad 1 on every side and its
2x2 max pools floor odd sizes, which is what the explicit paddings below do. Names follow the VGG
paper's layers; the mapping from torchvision's state-dict keys is

  torchvision                         Flax params
  features.0.weight (O, I, 3, 3)      features/conv1_1/kernel (3, 3, I, O)
  features.2.* ... features.28.*      features/conv1_2 ... features/conv5_3 (each conv+ReLU
                                      takes two indices of the Sequential, each max pool one)
  classifier.0.weight (4096, C*7*7)   fc6/kernel (7*7*C, 4096), rows permuted from torch's (c, h, w)
                                      flattening to our NHWC (h, w, c) one
  classifier.3.* / classifier.6.*     fc7/* / fc8/* (fc8 is the classification head)

timm's copy of the same weights (timm/vgg16.tv_in1k) stores fc6 and fc7 as convolutions
(pre_logits.fc1.weight (4096, 512, 7, 7), pre_logits.fc2.weight (4096, 4096, 1, 1)) and fc8 as
head.fc; `from_timm` reshapes them back. timm's VGG skips the adaptive pool, so it agrees with
torchvision's (and ours) at 224x224 inputs only; this module is torchvision's at every size.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading

# torchvision's configuration "D": the conv widths of each stage; every stage ends with a 2x2 pool.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# torchvision's VGG init: kaiming_normal_(fan_out, relu) convs, N(0, 0.01) linears, zero biases.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.normal(0.01)

HEAD = "fc8"  # the classifier a method replaces (iab_jax.weights keeps it fresh)

CHECKPOINTS = {
    "vgg16.tv_in1k": dict(
        source="timm/vgg16.tv_in1k",
        filename="model.safetensors",
        layout="timm vgg16 (torchvision's VGG16_Weights.IMAGENET1K_V1, classifier as timm's "
               "pre_logits/head; load_pretrained also takes torchvision's key names)",
        arch={},
        preprocess="resize(256)|central_crop(224)|normalize('imagenet')",
        notes="torchvision's original VGG-16 ImageNet weights (acc@1 71.59), 138,357,544 "
              "parameters. The features (conv1_1..conv5_3) are the VGG of LPIPS-vgg and of "
              "perceptual losses. The file's exact key names were not checked (offline): both "
              "timm's and torchvision's layouts are accepted."),
}


def stage_names(stages: Sequence[Sequence[int]] = VGG16_STAGES) -> tuple[str, ...]:
  """Names of the per-stage features, e.g. relu1_2 ... relu5_3 for VGG-16."""
  return tuple(f"relu{i + 1}_{len(widths)}" for i, widths in enumerate(stages))


STAGE_NAMES = stage_names()


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """torch's AdaptiveAvgPool2d((size, size)) on NHWC: bin i covers [floor(i*n/size), ceil(..)).

  The bins overlap where n is not a multiple of size, and repeat pixels where n < size; as a
  product with a fixed (size, n) averaging matrix per axis it is one small einsum either way.
  """
  n, h, w, c = x.shape
  if (h, w) == (size, size):
    return x

  def matrix(length: int) -> np.ndarray:
    m = np.zeros((size, length), np.float32)
    for i in range(size):
      start, end = (i * length) // size, -(-((i + 1) * length) // size)
      m[i, start:end] = 1.0 / (end - start)
    return m

  y = jnp.einsum("ih,nhwc,jw->nijc", matrix(h), x.astype(jnp.float32), matrix(w),
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


class Features(nn.Module):
  """torchvision's `features`: 3x3 conv + ReLU stacks, each stage closed by a 2x2 max pool.

  Returns (output after the last pool, [last ReLU of each stage]): the second is what perceptual
  losses compare (relu1_2 ... relu5_3 for the default VGG-16).
  """
  stages: Sequence[Sequence[int]] = VGG16_STAGES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    x = x.astype(self.dtype)
    outputs = []
    for i, widths in enumerate(self.stages):
      for j, width in enumerate(widths):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=_conv_init,
                    name=f"conv{i + 1}_{j + 1}")(x)
        x = nn.relu(x)
      outputs.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))  # "VALID": torch floors odd sizes
    return x, outputs


class Model(nn.Module):
  """VGG with torchvision's classifier; the defaults are torchvision's vgg16.

  Input: (N, H, W, 3) float32, ImageNet-normalised; H, W >= 32 (five 2x2 pools).
  Returns (output, aux): output the logits (N, num_classes) float32, or with num_classes=0 the fc7
  feature (N, hidden); aux["features"] that fc7 feature (after ReLU and dropout), float32;
  aux["stages"] the five stage features relu1_2 ... relu5_3 (see `STAGE_NAMES`) in the compute
  dtype. Training mode applies dropout and needs a "dropout" rng.
  """
  num_classes: int
  stages: Sequence[Sequence[int]] = VGG16_STAGES
  hidden: int = 4096
  pool_size: int = 7  # the adaptive average pool before fc6
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    x, stages = Features(self.stages, dtype=self.dtype, name="features")(x)
    x = adaptive_avg_pool(x, self.pool_size)
    x = x.reshape(x.shape[0], -1)  # (h, w, c) order; the converter permutes fc6 to match
    for name in ("fc6", "fc7"):
      x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=_dense_init, name=name)(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    features = x.astype(jnp.float32)
    if self.num_classes > 0:
      # The head runs in float32 whatever the compute dtype: it is small, and feeds softmax.
      output = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                        kernel_init=_dense_init, name="fc8")(features)
    else:
      output = features
    return output, {"features": features, "stages": stages}


# ---------------------------------------------------------------------------------------------
# torchvision and timm weights.


def _conv_keys(stages: Sequence[Sequence[int]]) -> dict[int, tuple[str, int, int]]:
  """torchvision `features` index -> (Flax conv name, in channels, out channels)."""
  keys, index, in_channels = {}, 0, 3
  for i, widths in enumerate(stages):
    for j, width in enumerate(widths):
      keys[index] = (f"conv{i + 1}_{j + 1}", in_channels, width)
      index += 2  # conv, ReLU
      in_channels = width
    index += 1  # max pool
  return keys


def _check_shape(key: str, value: np.ndarray, shape: Sequence[int | None]) -> None:
  if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape)
    want += ",)" if len(shape) == 1 else ")"
    raise ValueError(f"{key}: expected shape {want}, got {tuple(value.shape)}")


def features_from_torchvision(state: Mapping[str, np.ndarray], *,
                              stages: Sequence[Sequence[int]] = VGG16_STAGES,
                              prefix: str = "features.") -> dict[str, Any]:
  """The params of `Features` from torchvision's `features.<index>.{weight,bias}` tensors.

  Only keys under `prefix` are read; the caller decides what else the state dict may hold.
  """
  params = {}
  for index, (name, cin, cout) in _conv_keys(stages).items():
    w_key, b_key = f"{prefix}{index}.weight", f"{prefix}{index}.bias"
    for key in (w_key, b_key):
      if key not in state:
        raise ValueError(f"state dict is not a torchvision VGG with stages {_fmt(stages)}: "
                         f"missing {key}")
    w, b = np.asarray(state[w_key], np.float32), np.asarray(state[b_key], np.float32)
    _check_shape(w_key, w, (cout, cin, 3, 3))
    _check_shape(b_key, b, (cout,))
    params[name] = {"kernel": _loading.conv_kernel(w), "bias": b}
  return params


def _fmt(stages: Sequence[Sequence[int]]) -> str:
  return str(tuple(tuple(s) for s in stages))


def from_torchvision(state: Mapping[str, np.ndarray], *, num_classes: int | None = None,
                     stages: Sequence[Sequence[int]] = VGG16_STAGES) -> dict[str, Any]:
  """Maps a torchvision VGG state dict (numpy arrays) to Flax {"params"}.

  Any missing or unexpected key is an error that lists them, and so is a tensor of the wrong
  shape for `stages`. With `num_classes` given, a classifier.6 of another size is an error too:
  say None to take the head whatever its size (load_pretrained does).
  """
  conv_keys = _conv_keys(stages)
  expected = [f"features.{i}.{f}" for i in conv_keys for f in ("weight", "bias")]
  expected += [f"classifier.{i}.{f}" for i in (0, 3, 6) for f in ("weight", "bias")]
  _loading.check_state_keys(state, expected, f"torchvision VGG with stages {_fmt(stages)}")
  params = {"features": features_from_torchvision(state, stages=stages)}

  last = stages[-1][-1]
  w6 = np.asarray(state["classifier.0.weight"], np.float32)
  _check_shape("classifier.0.weight", w6, (None, None))
  hidden, fan_in = w6.shape
  pool = math.isqrt(fan_in // last)
  if pool * pool * last != fan_in:
    raise ValueError(f"classifier.0.weight: {fan_in} inputs are not {last} channels x a square "
                     "pool")
  # torch flattens (c, h, w); our NHWC maps flatten (h, w, c).
  w6 = w6.reshape(hidden, last, pool, pool).transpose(2, 3, 1, 0).reshape(fan_in, hidden)
  shapes = {"classifier.0.bias": (hidden,), "classifier.3.weight": (hidden, hidden),
            "classifier.3.bias": (hidden,), "classifier.6.weight": (None, hidden),
            "classifier.6.bias": (None,)}
  for key, shape in shapes.items():
    _check_shape(key, np.asarray(state[key]), shape)
  w8 = np.asarray(state["classifier.6.weight"], np.float32)
  if state["classifier.6.bias"].shape[0] != w8.shape[0]:
    raise ValueError(f"classifier.6.bias has {state['classifier.6.bias'].shape[0]} entries for "
                     f"{w8.shape[0]} classes")
  if num_classes is not None and w8.shape[0] != num_classes:
    raise ValueError(f"classifier.6.weight has {w8.shape[0]} classes, expected "
                     f"num_classes={num_classes}")
  vector = lambda key: np.asarray(state[key], np.float32)
  params["fc6"] = {"kernel": np.ascontiguousarray(w6), "bias": vector("classifier.0.bias")}
  params["fc7"] = {"kernel": _loading.dense_kernel(vector("classifier.3.weight")),
                   "bias": vector("classifier.3.bias")}
  params["fc8"] = {"kernel": _loading.dense_kernel(w8), "bias": vector("classifier.6.bias")}
  return {"params": params}


_TIMM_TO_TORCHVISION = {"pre_logits.fc1.": "classifier.0.", "pre_logits.fc2.": "classifier.3.",
                        "head.fc.": "classifier.6."}


def timm_to_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """timm's VGG key names and conv-shaped fc6/fc7 -> torchvision's (undoing timm's filter)."""
  out = {}
  for key, value in state.items():
    for timm_prefix, tv_prefix in _TIMM_TO_TORCHVISION.items():
      if key.startswith(timm_prefix):
        key = tv_prefix + key[len(timm_prefix):]
        if key.endswith(".weight") and np.ndim(value) == 4:
          value = np.reshape(value, (value.shape[0], -1))  # (O, C, kh, kw): torch's (c, h, w)
        break
    out[key] = value
  return out


def from_timm(state: Mapping[str, np.ndarray], **kwargs) -> dict[str, Any]:
  """A timm VGG state dict (e.g. timm/vgg16.tv_in1k) as Flax {"params"}; see from_torchvision."""
  return from_torchvision(timm_to_torchvision(state), **kwargs)


def stages_of(features_params: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
  """Reads the stage widths off the params of a `Features` (arrays or ShapeDtypeStructs)."""
  widths: dict[int, dict[int, int]] = {}
  for name, leaf in features_params.items():
    m = re.fullmatch(r"conv(\d+)_(\d+)", name)
    if m is None:
      raise ValueError(f"not a VGG features params tree (found {name!r})")
    widths.setdefault(int(m.group(1)), {})[int(m.group(2))] = leaf["kernel"].shape[-1]
  out = []
  for i in range(1, len(widths) + 1):
    if i not in widths or sorted(widths[i]) != list(range(1, len(widths[i]) + 1)):
      raise ValueError(f"not a VGG features params tree (names {sorted(features_params)})")
    out.append(tuple(widths[i][j] for j in sorted(widths[i])))
  return tuple(out)


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = HEAD) -> dict[str, Any]:
  """Returns `variables` with VGG weights from a safetensors file (timm's or torchvision's names).

  `variables` is the Model's {"params"} (arrays, or jax.ShapeDtypeStructs from jax.eval_shape).
  The file's fc8 goes to the params named `head`, kept as initialised when their shape differs
  (an attribution head over the benchmark's classes), and is dropped for a num_classes=0 model.
  """
  state = _loading.read_safetensors(
      path, "a VGG-16 safetensors file with timm's or torchvision's key names, e.g. "
      "model.safetensors of timm/vgg16.tv_in1k on Hugging Face")
  if any(k.startswith("pre_logits.") for k in state):
    state = timm_to_torchvision(state)
  stages = stages_of(variables["params"]["features"])
  converted = from_torchvision(state, stages=stages)
  head_params = converted["params"].pop("fc8")
  if head in variables["params"]:
    converted["params"][head] = head_params
  return _loading.merge(variables, converted, path=os.fspath(path), head=head)
