"""HRNet (High-Resolution Net) laid out exactly like timm's `HighResolutionNet`, in Flax Linen.

HRNet is the multi-resolution backbone family of HiFi-Net's feature extractor: it keeps a
stride-4 branch alive through the whole network and adds stride-8/16/32 branches stage by stage,
each stage ending in fuse layers that exchange information between all resolutions. For timm's
ImageNet weights to mean the same thing here everything follows timm: a stem of two stride-2 3x3
convs, stage 1 of bottlenecks, transitions (a 3x3 conv where a branch changes width, chains of
stride-2 3x3 convs that open new branches), multi-resolution modules of BasicBlock branches whose
fuse layers upsample with 1x1 conv + BN + nearest x2^k and downsample with chains of stride-2 3x3
convs, and the classification head (a bottleneck "incre" module per branch, stride-2 convs summing
the branches from high to low resolution, a 1x1 conv to 2048, global average pool, linear). Convs
have torch's explicit paddings, BN is torch's (eps 1e-5, momentum 0.1, unbiased running variance),
initialisers are timm's.

The architecture fields mirror timm's cfg dict (`arch_from_timm_cfg` translates one), so any
`hrnet_w*` variant, or a reduced one for tests, is built the same way. Parameter names follow
timm's state-dict keys, so `from_timm` is a rename plus a transpose:

  timm                                              Flax variables
  conv1.weight (O, I, kh, kw)                       params/conv1/kernel (kh, kw, I, O)
  bn1.weight / bias                                 params/bn1/scale / bias
  bn1.running_mean / running_var                    batch_stats/bn1/mean / var
  layer1.{k}.conv1 ... downsample.0 / .1            layer1_{k}/conv1 ... downsample_conv / _bn
  transition{t}.{i}.0 / .1   (width change)         transition{t}_{i}/conv / bn
  transition{t}.{i}.{k}.0 / .1   (new branch)       transition{t}_{i}/step{k}/conv / bn
  stage{s}.{m}.branches.{b}.{k}.conv1 ...           stage{s}_{m}/branches_{b}_{k}/conv1 ...
  stage{s}.{m}.fuse_layers.{i}.{j}.0 / .1  (j > i)  stage{s}_{m}/fuse_layers_{i}_{j}/conv / bn
  stage{s}.{m}.fuse_layers.{i}.{j}.{k}.0 / .1 (j<i) .../fuse_layers_{i}_{j}/step{k}/conv / bn
  incre_modules.{i}.0.conv1 ...                     incre_modules_{i}/conv1 ...
  downsamp_modules.{i}.0 / .1                       downsamp_modules_{i}/conv / bn
  final_layer.0 / .1                                final_layer/conv / bn
  classifier.weight (out, in) / bias                classifier/kernel (in, out) / bias
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _loading
from iab_jax.models.resnet import BatchNorm, Bottleneck

# timm's init_weights: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's nn.Linear default, kaiming_uniform_(a=sqrt(5)), is uniform(+-1/sqrt(fan_in)).
_fc_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_EXPANSION = {"BASIC": 1, "BOTTLENECK": 4}
_STEM_OUT = 64  # timm's second stem conv always outputs 64 channels, whatever stem_width is
_HEAD_CHANNELS = (32, 64, 128, 256)  # bottleneck widths of the incre modules (x4 out)
_NUM_FEATURES = 2048  # the final layer's width: the pooled feature

_BN_FIELDS = {  # torch name -> (collection, Flax name)
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """torch's default conv/linear bias: uniform(+-1/sqrt(fan_in)), a fan-in Flax never passes."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str, *,
          bias_fan_in: int | None = None) -> nn.Conv:
  """torch's Conv2d(k, stride, padding=k // 2); with bias_fan_in, a torch-initialised bias."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=bias_fan_in is not None, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=_conv_init,
                 bias_init=_torch_bias_init(bias_fan_in or 1), name=name)


class ConvBN(nn.Module):
  """Conv (padding k // 2) + torch BatchNorm [+ ReLU]: timm's Sequential(conv, bn[, relu])."""
  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    fan_in = x.shape[-1] * self.kernel**2 if self.use_bias else None
    x = _conv(self.features, self.kernel, self.stride, self.dtype, "conv", bias_fan_in=fan_in)(x)
    x = BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn")(x)
    return nn.relu(x) if self.relu else x


class StridedChain(nn.Module):
  """`len(widths)` stride-2 3x3 ConvBNs (step0, step1, ...), each to the width given.

  The ReLU after the last step is optional: a transition opening a new branch has it, a fuse
  layer's downsampling path has not (the ReLU comes after the fuse sum).
  """
  widths: Sequence[int]
  last_relu: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for k, width in enumerate(self.widths):
      relu = self.last_relu or k < len(self.widths) - 1
      x = ConvBN(width, 3, 2, relu=relu, dtype=self.dtype, name=f"step{k}")(x, train=train)
    return x


class BasicBlock(nn.Module):
  """timm's (= torchvision's) BasicBlock at stride 1: two 3x3 convs + shortcut.

  The shortcut is a 1x1 conv + BN where the width changes, as timm's HRNet builds it.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
    y = nn.relu(norm("bn1")(_conv(self.features, 3, 1, self.dtype, "conv1")(x)))
    y = norm("bn2")(_conv(self.features, 3, 1, self.dtype, "conv2")(y))
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = norm("downsample_bn")(_conv(self.features, 1, 1, self.dtype, "downsample_conv")(x))
    return nn.relu(y + shortcut)


def _block(block_type: str, planes: int, in_features: int, dtype: Any, name: str) -> nn.Module:
  """A stride-1 block of timm's kind, projecting the shortcut where the width changes."""
  if block_type == "BASIC":
    return BasicBlock(planes, dtype=dtype, name=name)
  out = planes * _EXPANSION["BOTTLENECK"]
  return Bottleneck(width=planes, stride=1, downsample=in_features != out, dtype=dtype, name=name)


def _nearest_upsample(x: jax.Array, factor: int) -> jax.Array:
  """nn.Upsample(scale_factor=factor, mode="nearest") for an integer factor: each pixel repeated."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class HighResolutionModule(nn.Module):
  """One multi-resolution module: a block sequence per branch, then every branch fused into each.

  Branch i's output is ReLU(sum_j f_ij(x_j)) with f_ii the identity, f_ij for j > i a 1x1 conv + BN
  to branch i's width then nearest upsampling by 2^(j - i), and f_ij for j < i a chain of i - j
  stride-2 3x3 conv + BN (ReLU between them, the last one widening to branch i's width).
  """
  block_type: str
  num_blocks: Sequence[int]
  planes: Sequence[int]  # block widths per branch; outputs are planes * expansion wide
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
    widths = [p * _EXPANSION[self.block_type] for p in self.planes]
    ys = []
    for b, x in enumerate(xs):
      for k in range(self.num_blocks[b]):
        x = _block(self.block_type, self.planes[b], x.shape[-1], self.dtype,
                   f"branches_{b}_{k}")(x, train=train)
      ys.append(x)
    if len(ys) == 1:
      return ys

    fused = []
    for i in range(len(ys)):
      total = None
      for j in range(len(ys)):
        if j == i:
          y = ys[j]
        elif j > i:
          y = ConvBN(widths[i], 1, 1, relu=False, dtype=self.dtype,
                     name=f"fuse_layers_{i}_{j}")(ys[j], train=train)
          y = _nearest_upsample(y, 2**(j - i))
          if y.shape[1:3] != ys[i].shape[1:3]:
            raise ValueError(
                f"HRNet branch {j} ({ys[j].shape[1]}x{ys[j].shape[2]}) upsampled x{2**(j - i)} is "
                f"{y.shape[1]}x{y.shape[2]}, not branch {i}'s {ys[i].shape[1]}x{ys[i].shape[2]}: "
                "the input's height and width must halve evenly down to the lowest branch "
                "(e.g. multiples of 32), as in timm, where the sum fails likewise")
        else:
          chain = [ys[j].shape[-1]] * (i - j - 1) + [widths[i]]
          y = StridedChain(chain, last_relu=False, dtype=self.dtype,
                           name=f"fuse_layers_{i}_{j}")(ys[j], train=train)
        total = y if total is None else total + y
      fused.append(nn.relu(total))
    return fused


# ---------------------------------------------------------------------------------------------
# Architecture bookkeeping, shared by the model and the state-dict table.


def _check_arch(block_types: Sequence[str], num_blocks: Sequence[Sequence[int]],
                num_channels: Sequence[Sequence[int]], num_modules: Sequence[int]) -> None:
  """Raises ValueError for a configuration timm's HighResolutionNet would not build."""
  if not len(block_types) == len(num_blocks) == len(num_channels) == len(num_modules) == 4:
    raise ValueError("HRNet has 4 stages: block_types, num_blocks, num_channels and num_modules "
                     f"must have 4 entries each, got {len(block_types)}, {len(num_blocks)}, "
                     f"{len(num_channels)}, {len(num_modules)}")
  for s in range(4):
    if block_types[s] not in _EXPANSION:
      raise ValueError(f"stage {s + 1}: unknown block type {block_types[s]!r}; known: "
                       f"{', '.join(_EXPANSION)}")
    if len(num_blocks[s]) != len(num_channels[s]) or not num_blocks[s]:
      raise ValueError(f"stage {s + 1}: num_blocks {tuple(num_blocks[s])} and num_channels "
                       f"{tuple(num_channels[s])} must give one entry per branch")
    # timm builds one block for a count of 0; asking for 0 is a mistake, not a request for 1.
    if min(num_blocks[s]) < 1 or min(num_channels[s]) < 1 or num_modules[s] < 1:
      raise ValueError(f"stage {s + 1}: block counts, channels and num_modules must be >= 1")
  if len(num_blocks[0]) != 1 or num_modules[0] != 1:
    raise ValueError("stage 1 is a single branch of one module (timm's layer1)")
  if len(num_blocks[3]) != len(_HEAD_CHANNELS):
    raise ValueError(f"the classification head needs {len(_HEAD_CHANNELS)} branches in stage 4, "
                     f"got {len(num_blocks[3])}")


def _transitions(pre: Sequence[int], cur: Sequence[int]) -> list[tuple[int, ...] | None]:
  """What timm's transition layer does to each branch of the next stage, given the widths before
  (pre) and after (cur): None passes the branch through; for an existing branch (i < len(pre)),
  (width,) is a stride-1 3x3 conv to that width; for a new branch, the widths of its chain of
  stride-2 3x3 convs.
  """
  out = []
  for i, width in enumerate(cur):
    if i < len(pre):
      out.append(None if width == pre[i] else (width,))
    else:
      # New branches grow from the lowest-resolution one, one stride-2 conv per missing level.
      depth = i + 1 - len(pre)
      out.append((pre[-1],) * (depth - 1) + (width,))
  return out


# ---------------------------------------------------------------------------------------------
# The network.


class Model(nn.Module):
  """timm's HighResolutionNet with its classification head; the defaults are hrnet_w18.

  Input: (N, H, W, 3) float32, already normalised, H and W such that the branches halve evenly
  (multiples of 32, e.g. 224). Returns (output, aux): output is the logits (N, num_classes)
  float32, or with num_classes=0 the pooled feature. aux["features"] is the pooled float32 feature
  (N, 2048); aux["stages"] the last stage's branch outputs, highest resolution first, strides
  4, 8, 16, 32 with num_channels[3] channels (times the block expansion), in the compute dtype.
  """
  num_classes: int
  stem_width: int = 64
  # Per stage, as timm's cfg: block type, blocks per branch, block widths per branch, modules.
  block_types: Sequence[str] = ("BOTTLENECK", "BASIC", "BASIC", "BASIC")
  num_blocks: Sequence[Sequence[int]] = ((4,), (4, 4), (4, 4, 4), (4, 4, 4, 4))
  num_channels: Sequence[Sequence[int]] = ((64,), (18, 36), (18, 36, 72), (18, 36, 72, 144))
  num_modules: Sequence[int] = (1, 1, 4, 3)
  head_conv_bias: bool = True  # False for timm's *_ssld variants
  dtype: Any = jnp.float32

  def stage_widths(self) -> list[list[int]]:
    """Output channels of each stage's branches: block widths times the block expansion."""
    return [[c * _EXPANSION[t] for c in chans]
            for t, chans in zip(self.block_types, self.num_channels)]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    _check_arch(self.block_types, self.num_blocks, self.num_channels, self.num_modules)
    norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
    x = x.astype(self.dtype)
    x = nn.relu(norm("bn1")(_conv(self.stem_width, 3, 2, self.dtype, "conv1")(x)))
    x = nn.relu(norm("bn2")(_conv(_STEM_OUT, 3, 2, self.dtype, "conv2")(x)))

    for k in range(self.num_blocks[0][0]):
      x = _block(self.block_types[0], self.num_channels[0][0], x.shape[-1], self.dtype,
                 f"layer1_{k}")(x, train=train)
    ys = [x]

    widths = self.stage_widths()
    for s in range(1, 4):
      xs = []
      for i, chain in enumerate(_transitions(widths[s - 1], widths[s])):
        name = f"transition{s}_{i}"
        if chain is None:
          xs.append(ys[i])
        elif i < len(ys):
          # timm feeds every transition conv the last branch (yl[-1]); on a branch that exists it
          # is only buildable when that branch is the last one, so ys[i] is the same input.
          xs.append(ConvBN(chain[0], 3, 1, dtype=self.dtype, name=name)(ys[i], train=train))
        else:
          xs.append(StridedChain(chain, last_relu=True, dtype=self.dtype,
                                 name=name)(ys[-1], train=train))
      for m in range(self.num_modules[s]):
        xs = HighResolutionModule(self.block_types[s], tuple(self.num_blocks[s]),
                                  tuple(self.num_channels[s]), dtype=self.dtype,
                                  name=f"stage{s + 1}_{m}")(xs, train=train)
      ys = xs
    stages = list(ys)

    # Classification head: widen each branch, then sum them from high to low resolution.
    y = None
    for i, branch in enumerate(ys):
      z = Bottleneck(width=_HEAD_CHANNELS[i], stride=1,
                     downsample=branch.shape[-1] != _HEAD_CHANNELS[i] * 4, dtype=self.dtype,
                     name=f"incre_modules_{i}")(branch, train=train)
      if y is not None:
        z = z + ConvBN(_HEAD_CHANNELS[i] * 4, 3, 2, use_bias=self.head_conv_bias,
                       dtype=self.dtype, name=f"downsamp_modules_{i - 1}")(y, train=train)
      y = z
    y = ConvBN(_NUM_FEATURES, 1, 1, use_bias=self.head_conv_bias, dtype=self.dtype,
               name="final_layer")(y, train=train)

    features = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    aux = {"features": features, "stages": stages}
    if self.num_classes == 0:
      return features, aux
    return classifier_head(self.num_classes)(features), aux


def classifier_head(num_classes: int) -> nn.Dense:
  """timm's classifier, nn.Linear(2048, num_classes) with torch's init, named "classifier".

  It runs in float32 whatever the compute dtype: it is small, and its logits feed softmax.
  """
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                  kernel_init=_fc_kernel_init, bias_init=_torch_bias_init(_NUM_FEATURES),
                  name="classifier")


def arch_from_timm_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Model kwargs from one of timm's HRNet cfg dicts (timm.models.hrnet.cfg_cls[name]).

  A `head_conv_bias` entry (timm's override for the *_ssld models) is carried over too.
  """
  stages = [cfg[f"stage{s}"] for s in range(1, 5)]
  for s, stage in enumerate(stages, start=1):
    if stage.get("fuse_method", "SUM") != "SUM":
      raise ValueError(f"stage{s}: only fuse_method 'SUM' exists in timm, got "
                       f"{stage['fuse_method']!r}")
    if stage["num_branches"] != len(stage["num_blocks"]):
      raise ValueError(f"stage{s}: num_branches {stage['num_branches']} but num_blocks "
                       f"{tuple(stage['num_blocks'])}")
  arch = dict(
      stem_width=int(cfg["stem_width"]),
      block_types=tuple(st["block_type"] for st in stages),
      num_blocks=tuple(tuple(int(n) for n in st["num_blocks"]) for st in stages),
      num_channels=tuple(tuple(int(c) for c in st["num_channels"]) for st in stages),
      num_modules=tuple(int(st["num_modules"]) for st in stages))
  if "head_conv_bias" in cfg:
    arch["head_conv_bias"] = bool(cfg["head_conv_bias"])
  _check_arch(arch["block_types"], arch["num_blocks"], arch["num_channels"], arch["num_modules"])
  return arch


# ---------------------------------------------------------------------------------------------
# timm weights.

# torch key -> (collection, Flax path, kind, torch shape); kind is "conv" (OIHW -> HWIO),
# "linear" ((out, in) -> (in, out)) or "vector". A None in a shape matches any size.
_KeyTable = dict[str, tuple[str, tuple[str, ...], str, tuple[int | None, ...]]]


def _timm_keys(model: Model, *, classifier: bool) -> _KeyTable:
  """The state-dict keys (and shapes) of timm's HighResolutionNet with `model`'s architecture."""
  _check_arch(model.block_types, model.num_blocks, model.num_channels, model.num_modules)
  keys: _KeyTable = {}

  def conv(torch_prefix, flax_path, out, inp, k, bias=False):
    keys[f"{torch_prefix}.weight"] = ("params", flax_path + ("kernel",), "conv", (out, inp, k, k))
    if bias:
      keys[f"{torch_prefix}.bias"] = ("params", flax_path + ("bias",), "vector", (out,))

  def bn(torch_prefix, flax_path, c):
    for field, (collection, name) in _BN_FIELDS.items():
      keys[f"{torch_prefix}.{field}"] = (collection, flax_path + (name,), "vector", (c,))

  def conv_bn(torch_prefix, flax_path, out, inp, k, bias=False):  # Sequential(conv, bn, ...)
    conv(f"{torch_prefix}.0", flax_path + ("conv",), out, inp, k, bias)
    bn(f"{torch_prefix}.1", flax_path + ("bn",), out)

  def block(block_type, torch_prefix, flax_path, inp, planes):
    out = planes * _EXPANSION[block_type]
    if block_type == "BASIC":
      convs = [(planes, inp, 3), (planes, planes, 3)]
    else:
      convs = [(planes, inp, 1), (planes, planes, 3), (out, planes, 1)]
    for n, (o, i, k) in enumerate(convs, start=1):
      conv(f"{torch_prefix}.conv{n}", flax_path + (f"conv{n}",), o, i, k)
      bn(f"{torch_prefix}.bn{n}", flax_path + (f"bn{n}",), o)
    if inp != out:
      conv(f"{torch_prefix}.downsample.0", flax_path + ("downsample_conv",), out, inp, 1)
      bn(f"{torch_prefix}.downsample.1", flax_path + ("downsample_bn",), out)
    return out

  def chain(torch_prefix, flax_path, inp, widths):
    for k, width in enumerate(widths):
      conv_bn(f"{torch_prefix}.{k}", flax_path + (f"step{k}",), width, inp, 3)
      inp = width

  conv("conv1", ("conv1",), model.stem_width, 3, 3)
  bn("bn1", ("bn1",), model.stem_width)
  conv("conv2", ("conv2",), _STEM_OUT, model.stem_width, 3)
  bn("bn2", ("bn2",), _STEM_OUT)
  inp = _STEM_OUT
  for k in range(model.num_blocks[0][0]):
    inp = block(model.block_types[0], f"layer1.{k}", (f"layer1_{k}",), inp,
                model.num_channels[0][0])

  widths = model.stage_widths()
  for s in range(1, 4):
    pre, cur = widths[s - 1], widths[s]
    for i, steps in enumerate(_transitions(pre, cur)):
      torch_prefix, flax_path = f"transition{s}.{i}", (f"transition{s}_{i}",)
      if steps is None:
        continue
      if i < len(pre):
        conv_bn(torch_prefix, flax_path, steps[0], pre[i], 3)
      else:
        chain(torch_prefix, flax_path, pre[-1], steps)
    for m in range(model.num_modules[s]):
      torch_stage, flax_stage = f"stage{s + 1}.{m}", f"stage{s + 1}_{m}"
      for b, n in enumerate(model.num_blocks[s]):
        inp = cur[b]
        for k in range(n):
          inp = block(model.block_types[s], f"{torch_stage}.branches.{b}.{k}",
                      (flax_stage, f"branches_{b}_{k}"), inp, model.num_channels[s][b])
      if len(cur) > 1:
        for i in range(len(cur)):
          for j in range(len(cur)):
            torch_prefix = f"{torch_stage}.fuse_layers.{i}.{j}"
            flax_path = (flax_stage, f"fuse_layers_{i}_{j}")
            if j > i:
              conv_bn(torch_prefix, flax_path, cur[i], cur[j], 1)
            elif j < i:
              chain(torch_prefix, flax_path, cur[j], [cur[j]] * (i - j - 1) + [cur[i]])

  for i, inp in enumerate(widths[3]):
    block("BOTTLENECK", f"incre_modules.{i}.0", (f"incre_modules_{i}",), inp, _HEAD_CHANNELS[i])
  for i in range(len(_HEAD_CHANNELS) - 1):
    conv_bn(f"downsamp_modules.{i}", (f"downsamp_modules_{i}",), _HEAD_CHANNELS[i + 1] * 4,
            _HEAD_CHANNELS[i] * 4, 3, model.head_conv_bias)
  conv_bn("final_layer", ("final_layer",), _NUM_FEATURES, _HEAD_CHANNELS[-1] * 4, 1,
          model.head_conv_bias)
  if classifier:
    keys["classifier.weight"] = ("params", ("classifier", "kernel"), "linear",
                                 (None, _NUM_FEATURES))
    keys["classifier.bias"] = ("params", ("classifier", "bias"), "vector", (None,))
  return keys


def from_timm(state: Mapping[str, np.ndarray], *, num_classes: int | None = None,
              **arch) -> dict[str, Any]:
  """Maps a timm HighResolutionNet state dict (numpy arrays) to Flax {"params", "batch_stats"}.

  arch: the Model's architecture fields (stem_width, block_types, ...; defaults hrnet_w18).
  num_classes: None takes the classifier whatever its size, or none if the file has none; 0 says
  the file must have no classifier (timm's num_classes=0); a positive number must match it.
  `num_batches_tracked` buffers are ignored; missing or unexpected keys and wrong shapes are errors.
  """
  model = Model(num_classes=num_classes or 0, **arch)
  classifier = "classifier.weight" in state if num_classes is None else num_classes > 0
  table = _timm_keys(model, classifier=classifier)
  _loading.check_state_keys(
      state, table, f"state dict is not a timm HRNet with this architecture ({_describe(model)})")

  flat = {}
  for key, (collection, path, kind, shape) in table.items():
    value = np.asarray(state[key], dtype=np.float32)
    if value.ndim != len(shape) or any(w is not None and v != w
                                       for v, w in zip(value.shape, shape)):
      want = tuple("*" if w is None else w for w in shape)
      raise ValueError(f"{key}: expected shape {want} (torch layout), got {value.shape}")
    if kind == "conv":
      value = _loading.conv_kernel(value)
    elif kind == "linear":
      value = _loading.dense_kernel(value)
    flat[(collection,) + path] = np.ascontiguousarray(value)
  if classifier and num_classes:
    file_classes = flat[("params", "classifier", "kernel")].shape[1]
    if file_classes != num_classes:
      raise ValueError(f"classifier.weight has {file_classes} classes, expected "
                       f"num_classes={num_classes}")
  return traverse_util.unflatten_dict(flat)


def _describe(model: Model) -> str:
  return (f"stem_width={model.stem_width}, block_types={tuple(model.block_types)}, "
          f"num_blocks={tuple(map(tuple, model.num_blocks))}, "
          f"num_channels={tuple(map(tuple, model.num_channels))}, "
          f"num_modules={tuple(model.num_modules)}, head_conv_bias={model.head_conv_bias}")


def load_pretrained(variables: dict[str, Any], path: str | os.PathLike, *,
                    head: str = "classifier", **arch) -> dict[str, Any]:
  """Returns `variables` with a timm HRNet's weights from a safetensors file.

  `variables` is the Model's {"params", "batch_stats"} (arrays, or jax.ShapeDtypeStructs from
  jax.eval_shape); arch the Model's architecture fields (defaults hrnet_w18). The file's classifier
  goes to the params named `head`, kept as initialised when its shape differs (an attribution head
  over the benchmark's classes instead of ImageNet's 1000) or when the file has none, and dropped
  when the model has no head (num_classes=0). Any other difference is an error naming the key.
  """
  state = _loading.read_safetensors(
      path, "a timm-layout HRNet safetensors file, e.g. model.safetensors of "
      "timm/hrnet_w18.ms_aug_in1k on Hugging Face (see hrnet.CHECKPOINTS)")
  converted = from_timm(state, **arch)
  params = dict(converted["params"])
  file_head = params.pop("classifier", None)
  if head in variables["params"]:
    params[head] = file_head if file_head is not None else variables["params"][head]
  converted = {**converted, "params": params}
  return _loading.merge(variables, converted, path=os.fspath(path), head=head)


# ---------------------------------------------------------------------------------------------
# Public checkpoints. timm's eval transform: resize the shorter side to floor(224 / crop_pct)
# (bilinear), centre-crop 224, ImageNet mean/std.

_W18_SMALL_V2 = dict(
    stem_width=64,
    block_types=("BOTTLENECK", "BASIC", "BASIC", "BASIC"),
    num_blocks=((2,), (2, 2), (2, 2, 2), (2, 2, 2, 2)),
    num_channels=((64,), (18, 36), (18, 36, 72), (18, 36, 72, 144)),
    num_modules=(1, 1, 3, 2))

CHECKPOINTS = {
    "hrnet_w18.ms_aug_in1k": dict(
        source="timm/hrnet_w18.ms_aug_in1k",
        filename="model.safetensors",
        layout="timm hrnet_w18 (HighResolutionNet, classification head)",
        arch={},
        preprocess="resize(235)|central_crop(224)|normalize('imagenet')",
        notes="The HRNet authors' ImageNet-1k weights trained with stronger augmentation; timm's "
              "default hrnet_w18 tag (crop_pct 0.95). 21,299,004 parameters."),
    "hrnet_w18.ms_in1k": dict(
        source="timm/hrnet_w18.ms_in1k",
        filename="model.safetensors",
        layout="timm hrnet_w18 (HighResolutionNet, classification head)",
        arch={},
        preprocess="resize(256)|central_crop(224)|normalize('imagenet')",
        notes="The HRNet authors' original ImageNet-1k weights (HRNet-Image-Classification's "
              "hrnetv2_w18), crop_pct 0.875."),
    "hrnet_w18_small_v2.ms_in1k": dict(
        source="timm/hrnet_w18_small_v2.ms_in1k",
        filename="model.safetensors",
        layout="timm hrnet_w18_small_v2 (HighResolutionNet, classification head)",
        arch=_W18_SMALL_V2,
        preprocess="resize(256)|central_crop(224)|normalize('imagenet')",
        notes="HRNet-W18-Small-v2, the ImageNet weights HiFi-Net's official code initialises its "
              "(differently wired) HRNet from; 15,597,464 parameters."),
}


HEAD = "classifier"  # the classifier a method replaces (iab_jax.weights keeps it fresh)
