"""AlexNet laid out exactly like torchvision's (the "one weird trick" variant), in Flax Linen.

LPIPS-alex compares the activations after AlexNet's five ReLUs (relu1 ... relu5), so the network
has to be torchvision's to the last detail: its 11x11 stride-4 first conv padded 2 on every side,
3x3 stride-2 max pools that floor odd sizes, an adaptive 6x6 average pool, and torch's default
initialisers (no custom init in torchvision's AlexNet). Names follow the layers; the mapping from
torchvision's state-dict keys is

  torchvision                          Flax params
  features.{0,3,6,8,10}.weight         features/conv{1..5}/kernel (kh, kw, I, O)
  features.{0,3,6,8,10}.bias           features/conv{1..5}/bias
  classifier.1.weight (4096, 256*6*6)  fc6/kernel (6*6*256, 4096), rows permuted from torch's
                                       (c, h, w) flattening to our NHWC (h, w, c) one
  classifier.4.* / classifier.6.*      fc7/* / fc8/* (fc8 is the classification head)
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading
from iab_jax.models.vgg import adaptive_avg_pool

# (features index, Flax name, out channels, kernel, stride, padding, max pool after the ReLU)
_CONVS = (
    (0, "conv1", 64, 11, 4, 2, True),
    (3, "conv2", 192, 5, 1, 2, True),
    (6, "conv3", 384, 3, 1, 1, False),
    (8, "conv4", 256, 3, 1, 1, False),
    (10, "conv5", 256, 3, 1, 1, True),
)
STAGE_NAMES = ("relu1", "relu2", "relu3", "relu4", "relu5")

# torch's default Conv2d/Linear init: kaiming_uniform_(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)) for
# the weight, and the same bound for the bias, which a Flax bias initialiser cannot compute itself.
_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


HEAD = "fc8"  # the classifier a method replaces (iab_jax.weights keeps it fresh)

CHECKPOINTS = {
    "alexnet.tv_in1k": dict(
        source="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        filename="alexnet-owt-7be5be79.pth",
        layout="torchvision alexnet (AlexNet_Weights.IMAGENET1K_V1)",
        arch={},
        preprocess="resize(256)|central_crop(224)|normalize('imagenet')",
        notes="No official safetensors copy exists (timm has no AlexNet): the torchvision .pth is "
              "a pickle and must be converted to safetensors with torchvision's key names by the "
              "data_prep tool (torch.load(weights_only=True)). Hugging Face "
              "theunnecessarythings/vision_models has an unofficial alexnet.safetensors (244 MB, "
              "keys not checked). 61,100,840 parameters; its features are LPIPS-alex's."),
}


class Features(nn.Module):
  """torchvision's AlexNet `features`; returns (output after the last pool, [relu1 ... relu5])."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    x = x.astype(self.dtype)
    outputs = []
    for _, name, width, k, s, p, pool in _CONVS:
      fan_in = x.shape[-1] * k * k
      x = nn.Conv(width, (k, k), (s, s), padding=((p, p), (p, p)), dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=_kernel_init,
                  bias_init=_bias_init(fan_in), name=name)(x)
      x = nn.relu(x)
      outputs.append(x)
      if pool:
        x = nn.max_pool(x, (3, 3), strides=(2, 2))  # "VALID": torch floors
    return x, outputs


class Model(nn.Module):
  """AlexNet with torchvision's classifier; the defaults are torchvision's alexnet.

  Input: (N, H, W, 3) float32, ImageNet-normalised; H, W >= 63 (torchvision's minimum).
  Returns (output, aux): output the logits (N, num_classes) float32, or with num_classes=0 the fc7
  feature (N, hidden); aux["features"] that fc7 feature (after ReLU), float32; aux["stages"] the
  five ReLU outputs relu1 ... relu5 (see `STAGE_NAMES`) in the compute dtype. Training mode applies
  dropout (before fc6 and fc7, as torchvision) and needs a "dropout" rng.
  """
  num_classes: int
  hidden: int = 4096
  pool_size: int = 6  # the adaptive average pool before fc6
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    x, stages = Features(dtype=self.dtype, name="features")(x)
    x = adaptive_avg_pool(x, self.pool_size)
    x = x.reshape(x.shape[0], -1)  # (h, w, c) order; the converter permutes fc6 to match
    for name in ("fc6", "fc7"):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=_kernel_init, bias_init=_bias_init(x.shape[-1]), name=name)(x)
      x = nn.relu(x)
    features = x.astype(jnp.float32)
    if self.num_classes > 0:
      # The head runs in float32 whatever the compute dtype: it is small, and feeds softmax.
      output = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                        kernel_init=_kernel_init, bias_init=_bias_init(self.hidden),
                        name="fc8")(features)
    else:
      output = features
    return output, {"features": features, "stages": stages}


# ---------------------------------------------------------------------------------------------
# torchvision weights.


def _check_shape(key: str, value: np.ndarray, shape) -> None:
  if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape)
    want += ",)" if len(shape) == 1 else ")"
    raise ValueError(f"{key}: expected shape {want}, got {tuple(value.shape)}")


def features_from_torchvision(state: Mapping[str, np.ndarray], *,
                              prefix: str = "features.") -> dict[str, Any]:
  """The params of `Features` from torchvision's `features.<index>.{weight,bias}` tensors."""
  params, cin = {}, 3
  for index, name, cout, k, _, _, _ in _CONVS:
    w_key, b_key = f"{prefix}{index}.weight", f"{prefix}{index}.bias"
    for key in (w_key, b_key):
      if key not in state:
        raise ValueError(f"state dict is not a torchvision AlexNet: missing {key}")
    w, b = np.asarray(state[w_key], np.float32), np.asarray(state[b_key], np.float32)
    _check_shape(w_key, w, (cout, cin, k, k))
    _check_shape(b_key, b, (cout,))
    params[name] = {"kernel": _loading.conv_kernel(w), "bias": b}
    cin = cout
  return params


def from_torchvision(state: Mapping[str, np.ndarray], *,
                     num_classes: int | None = None) -> dict[str, Any]:
  """Maps a torchvision AlexNet state dict (numpy arrays) to Flax {"params"}.

  Missing or unexpected keys and wrongly shaped tensors are errors naming them. With `num_classes`
  given, a classifier.6 of another size is an error too: say None to take the head whatever its
  size (load_pretrained does).
  """
  expected = [f"features.{c[0]}.{f}" for c in _CONVS for f in ("weight", "bias")]
  expected += [f"classifier.{i}.{f}" for i in (1, 4, 6) for f in ("weight", "bias")]
  _loading.check_state_keys(state, expected, "torchvision AlexNet")
  params = {"features": features_from_torchvision(state)}

  vector = lambda key: np.asarray(state[key], np.float32)
  w6 = vector("classifier.1.weight")
  _check_shape("classifier.1.weight", w6, (None, None))
  hidden, fan_in = w6.shape
  last = _CONVS[-1][2]
  pool = math.isqrt(fan_in // last)
  if pool * pool * last != fan_in:
    raise ValueError(f"classifier.1.weight: {fan_in} inputs are not {last} channels x a square "
                     "pool")
  # torch flattens (c, h, w); our NHWC maps flatten (h, w, c).
  w6 = w6.reshape(hidden, last, pool, pool).transpose(2, 3, 1, 0).reshape(fan_in, hidden)
  w8 = vector("classifier.6.weight")
  shapes = {"classifier.1.bias": (hidden,), "classifier.4.weight": (hidden, hidden),
            "classifier.4.bias": (hidden,), "classifier.6.weight": (None, hidden),
            "classifier.6.bias": (w8.shape[0],)}
  for key, shape in shapes.items():
    _check_shape(key, vector(key), shape)
  if num_classes is not None and w8.shape[0] != num_classes:
    raise ValueError(f"classifier.6.weight has {w8.shape[0]} classes, expected "
                     f"num_classes={num_classes}")
  params["fc6"] = {"kernel": np.ascontiguousarray(w6), "bias": vector("classifier.1.bias")}
  params["fc7"] = {"kernel": _loading.dense_kernel(vector("classifier.4.weight")),
                   "bias": vector("classifier.4.bias")}
  params["fc8"] = {"kernel": _loading.dense_kernel(w8), "bias": vector("classifier.6.bias")}
  return {"params": params}


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = HEAD) -> dict[str, Any]:
  """Returns `variables` with torchvision AlexNet weights from a safetensors file.

  `variables` is the Model's {"params"} (arrays, or jax.ShapeDtypeStructs from jax.eval_shape).
  The file's fc8 goes to the params named `head`, kept as initialised when their shape differs,
  and is dropped for a num_classes=0 model.
  """
  state = _loading.read_safetensors(
      path, "a torchvision-layout AlexNet safetensors file, converted from torchvision's "
      "alexnet-owt-7be5be79.pth (download.pytorch.org/models) by the data_prep tool")
  converted = from_torchvision(state)
  head_params = converted["params"].pop("fc8")
  if head in variables["params"]:
    converted["params"][head] = head_params
  return _loading.merge(variables, converted, path=os.fspath(path), head=head)
