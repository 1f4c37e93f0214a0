"""ResNet-50 (and deeper bottleneck ResNets) laid out exactly like torchvision's, in Flax Linen.

The benchmark's attributors fine-tune ImageNet ResNet-50s, so the network has to be torchvision's to
the last detail for its weights to mean the same thing here: v1.5 (the stride-2 sits on the 3x3 conv
of the bottleneck), torch's explicit paddings (Flax's "SAME" pads stride-2 convs and pools on the
other side and shifts every feature map), BN eps 1e-5 with torch's momentum, no conv biases, and the
same initialisers. Parameter names follow torchvision's state-dict keys, so `from_torchvision` is a
rename plus a transpose:

  torchvision                       Flax variables
  conv1.weight (O, I, kh, kw)       params/conv1/kernel (kh, kw, I, O)
  bn1.weight / bias                 params/bn1/scale / bias
  bn1.running_mean / running_var    batch_stats/bn1/mean / var
  layer2.0.conv1.weight             params/layer2_0/conv1/kernel
  layer2.0.downsample.0.weight      params/layer2_0/downsample_conv/kernel
  layer2.0.downsample.1.*           {params,batch_stats}/layer2_0/downsample_bn/*
  fc.weight (out, in) / fc.bias     params/fc/kernel (in, out) / bias
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading, _torch_init

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): an untruncated normal of variance
# 2 / (out_channels * kh * kw). Flax's fan_out of an HWIO kernel is the same product.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's nn.Linear default, kaiming_uniform_(a=sqrt(5)), is uniform(+-1/sqrt(fan_in)).
_fc_kernel_init = _torch_init.kernel_init

_EXPANSION = 4  # bottleneck output channels = 4 * the stage's width


_fc_bias_init = _torch_init.bias_init


class BatchNorm(nn.Module):
  """torch's BatchNorm2d: the running variance is updated with the unbiased batch variance.

  Flax's nn.BatchNorm keeps the biased one; the difference is a factor n / (n - 1) per update, tiny
  for large batches but not for layer4 (7x7 maps) at a small per-device batch, and it is what the
  pretrained running statistics were accumulated with. Statistics are taken in float32 whatever the
  compute dtype. Under jit with a globally sharded batch the means are over the global batch.
  """
  use_running_average: bool
  momentum: float = 0.9  # torch's momentum 0.1 is the weight of the new batch
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  scale_init: Callable[..., jax.Array] = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      # Two-pass variance: E[x^2] - E[x]^2 loses digits on post-ReLU maps with large means.
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = x.size // features
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased

    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = x.astype(jnp.float32) * mul + (bias - mean * mul)
    return y.astype(self.dtype)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (ResNet v1.5): 1x1 -> 3x3 (stride here) -> 1x1 expand, + shortcut."""
  width: int
  stride: int
  downsample: bool
  dtype: Any = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = lambda f, k, s, p, name: nn.Conv(
        f, (k, k), (s, s), padding=((p, p), (p, p)), use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=_conv_init, name=name)
    norm = lambda name, scale_init=nn.initializers.ones: BatchNorm(
        use_running_average=not train, dtype=self.dtype, scale_init=scale_init, name=name)

    y = nn.relu(norm("bn1")(conv(self.width, 1, 1, 0, "conv1")(x)))
    y = nn.relu(norm("bn2")(conv(self.width, 3, self.stride, 1, "conv2")(y)))
    # zero_init_residual starts every block as the identity (Goyal et al.), torchvision's option.
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = norm("bn3", last_scale)(conv(self.width * _EXPANSION, 1, 1, 0, "conv3")(y))

    shortcut = x
    if self.downsample:
      shortcut = conv(self.width * _EXPANSION, 1, self.stride, 0, "downsample_conv")(x)
      shortcut = norm("downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


class Model(nn.Module):
  """ResNet with bottleneck blocks; the defaults are torchvision's resnet50.

  Input: (N, H, W, 3) float32, already normalised; any H, W >= 1 (torch's arithmetic on odd sizes).
  Returns (logits (N, num_classes) float32, aux) with aux["features"] the pooled float32 feature
  (which is also the output when num_classes is 0: no fc),
  (N, 32 * width) = (N, 2048), and aux["stages"] the outputs of layer1..layer4 in the compute dtype.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Any = jnp.float32
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_conv_init,
                name="conv1")(x)
    x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    # Padding with -inf, as torch's MaxPool2d(3, 2, padding=1) does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    stages = []
    in_features = self.width
    for i, num_blocks in enumerate(self.stage_sizes):
      width = self.width * 2**i
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        # torchvision's rule: a projection shortcut wherever the shape changes.
        downsample = stride != 1 or in_features != width * _EXPANSION
        x = Bottleneck(width, stride, downsample, dtype=self.dtype,
                       zero_init_residual=self.zero_init_residual,
                       name=f"layer{i + 1}_{j}")(x, train=train)
        in_features = width * _EXPANSION
      stages.append(x)

    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if not self.num_classes:  # a backbone: the pooled feature is the output
      return features, {"features": features, "stages": stages}
    # The head runs in float32 whatever the compute dtype: it is small, and its logits feed softmax.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_fc_kernel_init, bias_init=_fc_bias_init(features.shape[-1]),
                      name="fc")(features)
    return logits, {"features": features, "stages": stages}


# ---------------------------------------------------------------------------------------------
# torchvision weights.

_BN_FIELDS = {  # torch name -> (collection, Flax name)
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _torchvision_keys(stage_sizes: Sequence[int]) -> dict[str, tuple[str, tuple[str, ...], str]]:
  """torch key -> (collection, Flax path, kind) for a bottleneck ResNet with these stage sizes.

  kind: "conv" (OIHW -> HWIO), "linear" ((out, in) -> (in, out)) or "vector" (copied).
  """
  keys = {"conv1.weight": ("params", ("conv1", "kernel"), "conv")}

  def add_bn(torch_prefix: str, flax_path: tuple[str, ...]):
    for field, (collection, name) in _BN_FIELDS.items():
      keys[f"{torch_prefix}.{field}"] = (collection, flax_path + (name,), "vector")

  add_bn("bn1", ("bn1",))
  for i, num_blocks in enumerate(stage_sizes):
    for j in range(num_blocks):
      torch_block, flax_block = f"layer{i + 1}.{j}", f"layer{i + 1}_{j}"
      for k in (1, 2, 3):
        keys[f"{torch_block}.conv{k}.weight"] = (
            "params", (flax_block, f"conv{k}", "kernel"), "conv")
        add_bn(f"{torch_block}.bn{k}", (flax_block, f"bn{k}"))
      # Every bottleneck ResNet projects on the first block of each stage (layer1 widens 64 -> 256).
      if j == 0:
        keys[f"{torch_block}.downsample.0.weight"] = (
            "params", (flax_block, "downsample_conv", "kernel"), "conv")
        add_bn(f"{torch_block}.downsample.1", (flax_block, "downsample_bn"))
  keys["fc.weight"] = ("params", ("fc", "kernel"), "linear")
  keys["fc.bias"] = ("params", ("fc", "bias"), "vector")
  return keys


def from_torchvision(state: dict[str, np.ndarray], *,
                     num_classes: int | None = None,
                     stage_sizes: Sequence[int] = (3, 4, 6, 3)) -> dict[str, Any]:
  """Maps a torchvision ResNet state dict (numpy arrays) to Flax {"params", "batch_stats"}.

  `num_batches_tracked` buffers are ignored. Any other missing or unexpected key is an error that
  lists them. With `num_classes` given, an fc of another size is an error too: say None to take the
  head whatever its size (load_pretrained does, and decides itself what to do with it).
  """
  expected = _torchvision_keys(stage_sizes)
  given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  missing = expected.keys() - given.keys()
  unexpected = given.keys() - expected.keys()
  if missing or unexpected:
    lines = [f"state dict is not a torchvision ResNet with stage sizes {tuple(stage_sizes)}:"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {_loading.format_keys(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {_loading.format_keys(unexpected)}")
    raise ValueError("\n".join(lines))

  flat = {}
  for key, (collection, path, kind) in expected.items():
    value = np.asarray(given[key], dtype=np.float32)
    want_ndim = {"conv": 4, "linear": 2, "vector": 1}[kind]
    if value.ndim != want_ndim:
      raise ValueError(f"{key}: expected a {want_ndim}-d {kind} tensor, got shape {value.shape}")
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif kind == "linear":
      value = value.T
    flat[(collection,) + path] = np.ascontiguousarray(value)

  fc_out = flat[("params", "fc", "kernel")].shape[1]
  if num_classes is not None and fc_out != num_classes:
    raise ValueError(f"fc.weight has {fc_out} classes, expected num_classes={num_classes}")
  return traverse_util.unflatten_dict(flat)


def _stage_sizes_of(params: dict[str, Any]) -> tuple[int, ...]:
  """Reads the stage sizes off a Model's params: the layer{i}_{j} names."""
  counts: dict[int, int] = {}
  for name in params:
    m = re.fullmatch(r"layer(\d+)_(\d+)", name)
    if m:
      stage = int(m.group(1))
      counts[stage] = max(counts.get(stage, 0), int(m.group(2)) + 1)
  if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
    raise ValueError(f"not a ResNet params tree (top-level names: {sorted(params)})")
  return tuple(counts[s] for s in sorted(counts))


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "fc") -> dict[str, Any]:
  """Returns `variables` with a torchvision-layout ResNet's weights from a safetensors file.

  `variables` is the Model's {"params", "batch_stats"} (arrays, or jax.ShapeDtypeStructs from
  jax.eval_shape for every leaf but the head). Every tensor of the file is copied in, converted and
  put on the target leaf's sharding when it has one. The file's fc goes to the params named `head`,
  which are kept as initialised when their shape differs, e.g. an attribution head over the
  benchmark's classes instead of ImageNet's 1000. Any other shape mismatch is an error.
  """
  path = os.fspath(path)
  state = _loading.read_safetensors(path, (
      "a torchvision-layout ResNet-50 safetensors file, e.g. model.safetensors of "
      "timm/resnet50.tv_in1k (or resnet50.a1_in1k) on Hugging Face, or one converted from "
      "torchvision's .pth with "
      "`python -m data_prep.convert_weights`"))
  stage_sizes = _stage_sizes_of(variables["params"])
  converted = from_torchvision(state, stage_sizes=stage_sizes)
  # The file's head is torch's fc; a model that names its head otherwise receives it there, and a
  # headless backbone drops it.
  if head not in variables["params"]:
    del converted["params"]["fc"]
  elif head != "fc":
    converted["params"][head] = converted["params"].pop("fc")
  torch_names = {(c,) + p: t for t, (c, p, _) in _torchvision_keys(stage_sizes).items()}
  return _loading.merge(variables, converted, path=path, head=head,
                        collections=("params", "batch_stats"),
                        source_name=lambda k: torch_names.get(k, "/".join(k)))


# Public checkpoints the benchmark's methods start from (ResNet-50, FSD, SSP, GFD's classifier).
CHECKPOINTS = {
    "resnet50.tv_in1k": dict(
        source="timm/resnet50.tv_in1k", filename="model.safetensors",
        layout="torchvision resnet50 (IMAGENET1K_V1), torchvision key names",
        arch=dict(stage_sizes=(3, 4, 6, 3)),
        preprocess="resize(256)|central_crop(224)|normalize('imagenet')",
        notes="torchvision.models.resnet50(weights='IMAGENET1K_V1'), the weights the paper's "
              "ResNet-50 baseline names; timm re-hosts them as safetensors"),
    "resnet50.tv2_in1k": dict(
        source="timm/resnet50.tv2_in1k", filename="model.safetensors",
        layout="torchvision resnet50 (IMAGENET1K_V2), torchvision key names",
        arch=dict(stage_sizes=(3, 4, 6, 3)),
        preprocess="resize(232)|central_crop(224)|normalize('imagenet')",
        notes="torchvision's newer training recipe (80.9% top-1)"),
}

HEAD = "fc"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
