"""HiFi-Net (Guo et al., CVPR 2023) as the ImageAttributionBench trains it, in Flax Linen.

Two parts, named as in the official attributor (`FENet`, `SegNet`):

- FENet, HiFi-Net's own HRNet. Unlike timm's (iab_jax/models/hrnet.py) it never strides in the
  stem, so branch 1 stays at the input's full resolution; a parallel "frequency" stem runs
  LaPlacianMs (the feature minus its Gaussian-smoothed, down- and re-up-sampled self at three
  scales); a grouped 1x1 conv merges the two stems; layer1 is two bottlenecks; transition1 opens
  all four branches at once (strides 1, 2, 4, 8); stages 2-4 are one module each of BasicBlock
  branches whose fuse layers upsample bilinearly with align_corners=True (timm: nearest). BN
  momentum is torch's 0.01 there (Flax 0.99), torch's default 0.1 in LaPlacianMs, the merge and
  the heads.
- The classification part of NLCDetection: four BranchCLS heads (conv3x3 -> 32, ReLU, conv3x3 ->
  18, ReLU, global average pool, BN1d, linear) on s4, cat(up s4, s3), cat(up ., s2) and
  cat(up ., s1, pconv), from the coarse level (generated/real) to the fine one (the classes).
  `pconv` comes from the NonLocalMask localisation branch on s1 (non-local attention over a plain
  reshape of s1 to 16x the channels, a mask conv, the image masked and passed through three stride-2
  partial convolutions); the official code detaches it, so that branch gets no gradient from the
  classification losses, but its output does feed the finest head.

Only what the official classification forward computes is built: 6,890,245 parameters for 23
classes and the official level sizes (2, 4, 6), plus the 189 all-ones PartialConv mask-conv weights
the official model also counts (frozen constants here, `MASK_CONV_WEIGHTS`).

Input (N, H, W, 3) normalised to [-1, 1], H and W multiples of 4 (256 in the benchmark). Returns (level-4 logits (N, num_classes) float32, aux): aux["features"] the
level-4 head's pooled, batch-normalised feature (N, 18) float32 (also the output when
num_classes=0), aux["level_logits"] the logits of levels 1-3 (coarse to fine), aux["stages"]
s1..s4. Parameter names follow the official state-dict keys (see `official_key_table`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.models import _torch_init
from iab_jax.models.resnet import BatchNorm

_HRNET_MOMENTUM = 0.99  # the official BN_MOMENTUM = 0.01 in torch's convention
_TORCH_MOMENTUM = 0.9  # torch's default 0.1
# kaiming_normal_(mode="fan_in") (LaPlacianMs, the merge conv, PartialConv input convs).
_kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_CLS_WIDTH = 32  # BranchCLS's first conv
_MASK_WIDTH = 16  # NonLocalMask's getmask conv
_REDUCE = 4  # NonLocalMask reshapes s1 to 16x the channels at 1/4 the size
_PCONV_OUT = (3, 3, 1)  # the three PartialConvs' outputs (inputs 3, 3, 3)

HEAD = "branch_cls_level_4"  # the finest head, over the run's classes


def mask_conv_weights() -> int:
  """The official model's frozen all-ones PartialConv mask-conv weights (counted in its total)."""
  return sum(3 * out * 9 for out in _PCONV_OUT)


MASK_CONV_WEIGHTS = mask_conv_weights()


# ---------------------------------------------------------------------------------------------
# Interpolation with torch's coordinate conventions, as (out, in) matrices applied per axis.


def interpolation_matrix(in_size: int, out_size: int, *, align_corners: bool,
                         scale: float | None = None) -> np.ndarray:
  """torch's 1-D bilinear weights (out_size, in_size) (F.interpolate, antialias=False).

  align_corners=True maps dst to src = dst * (in - 1) / (out - 1). Otherwise src = (dst + 0.5) *
  ratio - 0.5 clamped at 0, ratio = 1 / scale when F.interpolate was given scale_factor=scale
  (torch keeps that scale rather than in / out), else in / out.
  """
  m = np.zeros((out_size, in_size), np.float64)
  for d in range(out_size):
    if align_corners:
      src = d * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
      ratio = 1.0 / scale if scale else in_size / out_size
      src = max((d + 0.5) * ratio - 0.5, 0.0)
    i0 = min(int(src), in_size - 1)
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    w1 = src - i0
    m[d, i0] += 1.0 - w1
    m[d, i1] += w1
  return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int], *, align_corners: bool,
                    scale: float | None = None) -> jax.Array:
  """F.interpolate(mode="bilinear") on NHWC `x` to `size` (see interpolation_matrix)."""
  mh = interpolation_matrix(x.shape[1], size[0], align_corners=align_corners, scale=scale)
  mw = interpolation_matrix(x.shape[2], size[1], align_corners=align_corners, scale=scale)
  hi = jax.lax.Precision.HIGHEST  # exact weights, not TF32, whatever the platform default
  y = jnp.einsum("oh,nhwc->nowc", jnp.asarray(mh, x.dtype), x, precision=hi)
  return jnp.einsum("pw,nowc->nopc", jnp.asarray(mw, x.dtype), y, precision=hi)


def gaussian_kernel(sigma: float, size: int = 3) -> np.ndarray:
  """GaussianSmoothing's (size, size) kernel: a separable Gaussian of std sigma, summing to 1."""
  t = np.arange(size, dtype=np.float64) - (size - 1) / 2
  k = np.exp(-((t / sigma)**2) / 2)
  k2 = np.outer(k, k)
  return (k2 / k2.sum()).astype(np.float32)


def laplacian_residuals(x: jax.Array, scales: Sequence[int]) -> jax.Array:
  """LaPlacianMs without its 1x1 conv: per scale s, x - up(down(smooth_s(x))), concatenated.

  smooth_s is an unpadded depthwise 3x3 Gaussian of std s (so H-2 x W-2), down is bilinear with
  scale_factor 1/s, up is bilinear back to H x W (both align_corners=False).
  """
  h, w = x.shape[1:3]
  outs = []
  for s in scales:
    k = gaussian_kernel(float(s))
    sm = sum(float(k[a, b]) * x[:, a:a + h - 2, b:b + w - 2, :]
             for a in range(3) for b in range(3))
    down = (math.floor((h - 2) / s), math.floor((w - 2) / s))
    sm = resize_bilinear(sm, down, align_corners=False, scale=1.0 / s)
    sm = resize_bilinear(sm, (h, w), align_corners=False)
    outs.append(x - sm)
  return jnp.concatenate(outs, axis=-1)


# ---------------------------------------------------------------------------------------------
# Layers.


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str, *, bias: bool = False,
          padding: int | None = None, groups: int = 1, init=None, fan_in: int = 1) -> nn.Conv:
  """torch's Conv2d(kernel, stride, padding=kernel // 2 unless given); torch's default init."""
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=init or _torch_init.kernel_init,
                 bias_init=(nn.initializers.zeros if init is not None
                            else _torch_init.bias_init(fan_in)), name=name)


def _norm(train: bool, momentum: float, dtype: Any, name: str) -> BatchNorm:
  return BatchNorm(use_running_average=not train, momentum=momentum, dtype=dtype, name=name)


class ConvBN(nn.Module):
  """Sequential(conv (no bias), BN at the HRNet momentum[, ReLU]): HRNet's transition/fuse step."""
  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv(self.features, self.kernel, self.stride, self.dtype, "conv")(x)
    x = _norm(train, _HRNET_MOMENTUM, self.dtype, "bn")(x)
    return nn.relu(x) if self.relu else x


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN and an identity shortcut (HRNet's branches never change width)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.features, 3, 1, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, _HRNET_MOMENTUM, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = _norm(train, _HRNET_MOMENTUM, self.dtype, "bn2")(y)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4) + shortcut (1x1 conv + BN where the width changes), stride 1."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = lambda name: _norm(train, _HRNET_MOMENTUM, self.dtype, name)
    y = nn.relu(norm("bn1")(_conv(self.width, 1, 1, self.dtype, "conv1")(x)))
    y = nn.relu(norm("bn2")(_conv(self.width, 3, 1, self.dtype, "conv2")(y)))
    y = norm("bn3")(_conv(4 * self.width, 1, 1, self.dtype, "conv3")(y))
    shortcut = x
    if x.shape[-1] != 4 * self.width:
      shortcut = norm("downsample_bn")(_conv(4 * self.width, 1, 1, self.dtype,
                                             "downsample_conv")(x))
    return nn.relu(y + shortcut)


class HighResolutionModule(nn.Module):
  """BasicBlocks per branch, then branch i = ReLU(sum_j f_ij(x_j)): f_ij for j > i a 1x1 conv +
  BN then bilinear (align_corners=True) upsampling, for j < i i - j stride-2 3x3 conv + BN."""
  channels: Sequence[int]
  num_blocks: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
    ys = []
    for b, x in enumerate(xs):
      for k in range(self.num_blocks):
        x = BasicBlock(self.channels[b], self.dtype, name=f"branches_{b}_{k}")(x, train=train)
      ys.append(x)
    fused = []
    for i in range(len(ys)):
      total = None
      for j in range(len(ys)):
        if j == i:
          y = ys[j]
        elif j > i:
          y = ConvBN(self.channels[i], 1, 1, relu=False, dtype=self.dtype,
                     name=f"fuse_layers_{i}_{j}")(ys[j], train=train)
          y = resize_bilinear(y, ys[i].shape[1:3], align_corners=True)
        else:
          y = ys[j]
          for k in range(i - j):
            last = k == i - j - 1
            y = ConvBN(self.channels[i] if last else self.channels[j], 3, 2, relu=not last,
                       dtype=self.dtype, name=f"fuse_layers_{i}_{j}_{k}")(y, train=train)
        total = y if total is None else total + y
      fused.append(nn.relu(total))
    return fused


class FENet(nn.Module):
  """HiFi-Net's HRNet feature extractor: [s1, s2, s3, s4] at strides 1, 2, 4, 8."""
  stem_width: int = 64
  branch_channels: Sequence[int] = (18, 36, 72, 144)
  layer1_blocks: int = 2
  branch_blocks: int = 2
  laplacian_scales: Sequence[int] = (2, 4, 8)
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    w = self.stem_width
    hrnet_norm = lambda name: _norm(train, _HRNET_MOMENTUM, self.dtype, name)
    torch_norm = lambda name: _norm(train, _TORCH_MOMENTUM, self.dtype, name)
    dropout = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)

    fre = nn.relu(hrnet_norm("bn1fre")(_conv(w, 3, 1, self.dtype, "conv1fre")(x)))
    fre = laplacian_residuals(fre, self.laplacian_scales)
    fre = _conv(w, 1, 1, self.dtype, "laplacian_conv", init=_kaiming_normal)(fre)
    fre = dropout(nn.relu(torch_norm("laplacian_bn")(fre)))
    fre = nn.relu(hrnet_norm("bn2fre")(_conv(w, 3, 1, self.dtype, "conv2fre")(fre)))

    x = nn.relu(hrnet_norm("bn1")(_conv(w, 3, 1, self.dtype, "conv1")(x)))
    x = nn.relu(hrnet_norm("bn2")(_conv(w, 3, 1, self.dtype, "conv2")(x)))

    x = jnp.concatenate([x, fre], axis=-1)
    x = _conv(w, 1, 1, self.dtype, "merge_conv", groups=2, init=_kaiming_normal)(x)
    x = dropout(nn.relu(torch_norm("merge_bn")(x)))

    for k in range(self.layer1_blocks):
      x = Bottleneck(w, self.dtype, name=f"layer1_{k}")(x, train=train)
    # transition1 opens every branch from layer1's output: a stride-1 conv for branch 0, chains
    # of stride-2 convs (layer1's width until the last) for the others.
    xs = []
    for i, c in enumerate(self.branch_channels):
      y = x
      for k in range(max(i, 1)):
        last = k == max(i, 1) - 1
        y = ConvBN(c if last else x.shape[-1], 3, 1 if i == 0 else 2, dtype=self.dtype,
                   name=f"transition1_{i}_{k}")(y, train=train)
      xs.append(y)
    for s in (2, 3, 4):
      xs = HighResolutionModule(tuple(self.branch_channels), self.branch_blocks, self.dtype,
                                name=f"stage{s}")(xs, train=train)
    return xs


class PartialConv(nn.Module):
  """Stride-2 unpadded 3x3 partial convolution with a fixed all-ones mask conv.

  out = (conv(x) - b) / sum_window(mask) + b where the mask's window sum is nonzero, else 0; the
  new mask is 1 there, else 0.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = _conv(self.features, 3, 2, self.dtype, "input_conv", bias=True, padding=0,
                 init=_kaiming_normal)
    out = conv(x)
    bias = conv.variables["params"]["bias"].astype(out.dtype)
    ones = jnp.ones((3, 3, mask.shape[-1], self.features), mask.dtype)
    window = jax.lax.conv_general_dilated(
        jax.lax.stop_gradient(mask), ones, (2, 2), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    holes = window == 0
    out = jnp.where(holes, 0.0, (out - bias) / jnp.where(holes, 1.0, window) + bias)
    return out.astype(self.dtype), jnp.where(holes, 0.0, 1.0).astype(mask.dtype)


class NonLocalMask(nn.Module):
  """The localisation branch on s1 as far as the classification uses it: the partial-conv map.

  s1 (N, H, W, C) is reshaped as torch reshapes NCHW memory, to (N, 16C, H/4, W/4); 1x1 convs
  g, theta, phi and softmax attention over the H*W/16 positions give y, viewed back as
  (N, C, H, W); mask = sigmoid(getmask(s1 + gamma * W_s(y))); the image times the mask goes
  through three PartialConvs. Returns (pconv map (N, h, w, 1), mask (N, H, W, 1)).
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, img: jax.Array) -> tuple[jax.Array, jax.Array]:
    n, h, w, c = x.shape
    ic = c * _REDUCE * _REDUCE
    length = (h // _REDUCE) * (w // _REDUCE)
    x1 = jnp.transpose(x, (0, 3, 1, 2)).reshape(n, ic, length)
    x1 = jnp.transpose(x1, (0, 2, 1))[:, None]  # (N, 1, L, ic): 1x1 convs act on the last axis
    conv1x1 = lambda name: _conv(ic, 1, 1, self.dtype, name, bias=True, fan_in=ic)
    g_x = conv1x1("g")(x1)[:, 0]  # (N, L, ic)
    theta_x = conv1x1("theta")(x1)[:, 0]
    phi_x = conv1x1("phi")(x1)[:, 0]
    f = jnp.einsum("nlc,nmc->nlm", theta_x, phi_x).astype(jnp.float32)
    attention = jax.nn.softmax(f, axis=-1).astype(self.dtype)
    y = jnp.einsum("nlm,nmc->nlc", attention, g_x)  # (N, L, ic)
    y = jnp.transpose(y, (0, 2, 1)).reshape(n, c, h, w).transpose(0, 2, 3, 1)
    gamma = self.param("gamma_s", nn.initializers.ones, (1,), jnp.float32)
    feat = x + gamma.astype(self.dtype) * _conv(c, 1, 1, self.dtype, "W_s", bias=True,
                                                fan_in=c)(y)
    m = nn.relu(_conv(_MASK_WIDTH, 3, 1, self.dtype, "getmask_0", bias=True, fan_in=c * 9)(feat))
    m = _conv(1, 3, 1, self.dtype, "getmask_2", bias=True, fan_in=_MASK_WIDTH * 9)(m)
    mask = jax.nn.sigmoid(m.astype(jnp.float32)).astype(self.dtype)
    mask3 = jnp.repeat(mask, img.shape[-1], axis=-1)
    p, new_mask = PartialConv(_PCONV_OUT[0], self.dtype, name="Pconv_1")(img * mask3, mask3)
    p, new_mask = PartialConv(_PCONV_OUT[1], self.dtype, name="Pconv_2")(p, new_mask)
    p, _ = PartialConv(_PCONV_OUT[2], self.dtype, name="Pconv_3")(p, new_mask)
    return p, mask


class BranchCLS(nn.Module):
  """conv3x3 -> 32, ReLU, conv3x3 -> 18, ReLU, global average pool, BN1d, linear (if classes)."""
  num_classes: int
  feature_width: int = 18
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array | None, jax.Array]:
    x = nn.relu(_conv(_CLS_WIDTH, 3, 1, self.dtype, "branch_cls_0", bias=True,
                      fan_in=x.shape[-1] * 9)(x))
    x = nn.relu(_conv(self.feature_width, 3, 1, self.dtype, "branch_cls_2", bias=True,
                      fan_in=_CLS_WIDTH * 9)(x))
    feat = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feat = BatchNorm(use_running_average=not train, momentum=_TORCH_MOMENTUM,
                     dtype=jnp.float32, name="bn")(feat)
    if not self.num_classes:
      return None, feat
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_torch_init.kernel_init,
                      bias_init=_torch_init.bias_init(self.feature_width), name="fc")(feat)
    return logits, feat


class Model(nn.Module):
  """FENet + the NLCDetection classification heads; defaults are the official sizes.

  num_classes: the finest level's classes (the run's classes); 0 leaves that head without its
  linear layer, and the output is its feature. level_classes: the coarser heads' sizes, levels
  1-3 (generated/real, commercial/open/real, the architecture group); the official code has
  (2, 4, 6), the paper's Table 6 (2, 3, 6).
  """
  num_classes: int
  level_classes: Sequence[int] = (2, 3, 6)
  stem_width: int = 64
  branch_channels: Sequence[int] = (18, 36, 72, 144)
  layer1_blocks: int = 2
  branch_blocks: int = 2
  laplacian_scales: Sequence[int] = (2, 4, 8)
  dropout_rate: float = 0.2
  head_width: int = 18  # the BranchCLS feature width (official: 18 for every head)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    if len(self.level_classes) != 3 or len(self.branch_channels) != 4:
      raise ValueError(f"HiFi-Net has 4 branches and 3 coarse levels; got branch_channels="
                       f"{tuple(self.branch_channels)}, level_classes={tuple(self.level_classes)}")
    if x.shape[1] % _REDUCE or x.shape[2] % _REDUCE:
      raise ValueError(f"HiFi-Net input {x.shape[1]}x{x.shape[2]}: height and width must be "
                       f"multiples of {_REDUCE} (NonLocalMask's reshape of s1)")
    x = x.astype(self.dtype)
    s1, s2, s3, s4 = FENet(self.stem_width, tuple(self.branch_channels), self.layer1_blocks,
                           self.branch_blocks, tuple(self.laplacian_scales), self.dropout_rate,
                           self.dtype, name="FENet")(x, train=train)

    pconv, _ = NonLocalMask(self.dtype, name="getmask")(s1, x)
    # Detached in the official code: the classification losses do not train the mask branch.
    pconv = resize_bilinear(jax.lax.stop_gradient(pconv), s1.shape[1:3], align_corners=True)

    head = lambda k, level: BranchCLS(k, self.head_width, self.dtype,
                                      name=f"branch_cls_level_{level}")
    up = lambda y, like: resize_bilinear(y, like.shape[1:3], align_corners=True)
    cls1, _ = head(self.level_classes[0], 1)(s4, train=train)
    s3_in = jnp.concatenate([up(s4, s3), s3], axis=-1)
    cls2, _ = head(self.level_classes[1], 2)(s3_in, train=train)
    s2_in = jnp.concatenate([up(s3_in, s2), s2], axis=-1)
    cls3, _ = head(self.level_classes[2], 3)(s2_in, train=train)
    s1_in = jnp.concatenate([up(s2_in, s1), s1, pconv], axis=-1)
    cls4, feat = head(self.num_classes, 4)(s1_in, train=train)
    aux = {"features": feat, "level_logits": (cls1, cls2, cls3), "stages": [s1, s2, s3, s4]}
    return (feat if cls4 is None else cls4), aux


# ---------------------------------------------------------------------------------------------
# The official state-dict layout.

# torch key -> (collection, Flax path, kind, torch shape); kind: "conv" (OIHW -> HWIO),
# "linear" ((out, in) -> (in, out)), "vector", or "constant" (checked for shape, not loaded).
KeyTable = dict[str, tuple[str, tuple[str, ...], str, tuple[int, ...]]]


def official_key_table(model: Model) -> KeyTable:
  """Every key of the official attributor's state dict for `model`'s sizes, with its target.

  FENet.* is the HRNet, SegNet.* NLCDetection. BN running statistics go to batch_stats;
  num_batches_tracked, the PartialConv mask convs (all ones) and the Gaussian smoothing kernels
  are constants of the architecture ("constant").
  """
  keys: KeyTable = {}
  w, chans = model.stem_width, tuple(model.branch_channels)

  def conv(torch, path, o, i, k, bias=False):
    keys[f"{torch}.weight"] = ("params", path + ("kernel",), "conv", (o, i, k, k))
    if bias:
      keys[f"{torch}.bias"] = ("params", path + ("bias",), "vector", (o,))

  def bn(torch, path, c):
    for field, (col, name) in (("weight", ("params", "scale")), ("bias", ("params", "bias")),
                               ("running_mean", ("batch_stats", "mean")),
                               ("running_var", ("batch_stats", "var"))):
      keys[f"{torch}.{field}"] = (col, path + (name,), "vector", (c,))
    keys[f"{torch}.num_batches_tracked"] = ("", (), "constant", ())

  def conv_bn(torch, path, o, i, k):  # Sequential(conv, bn[, relu])
    conv(f"{torch}.0", path + ("conv",), o, i, k)
    bn(f"{torch}.1", path + ("bn",), o)

  fe = ("FENet",)
  for suffix in ("", "fre"):
    conv(f"FENet.conv1{suffix}", fe + (f"conv1{suffix}",), w, 3, 3)
    bn(f"FENet.bn1{suffix}", fe + (f"bn1{suffix}",), w)
    conv(f"FENet.conv2{suffix}", fe + (f"conv2{suffix}",), w, w, 3)
    bn(f"FENet.bn2{suffix}", fe + (f"bn2{suffix}",), w)
  for s in model.laplacian_scales:
    keys[f"FENet.laplacian.smoothing.scale-{s}.weight"] = ("", (), "constant", (w, 1, 3, 3))
  conv("FENet.laplacian.conv_1x1.0", fe + ("laplacian_conv",), w,
       w * len(model.laplacian_scales), 1)
  bn("FENet.laplacian.conv_1x1.1", fe + ("laplacian_bn",), w)
  conv("FENet.conv_1x1_merge.0", fe + ("merge_conv",), w, w, 1)  # groups=2: 2w -> w
  bn("FENet.conv_1x1_merge.1", fe + ("merge_bn",), w)
  inp = w
  for k in range(model.layer1_blocks):
    t, p = f"FENet.layer1.{k}", fe + (f"layer1_{k}",)
    for n, (o, i, ks) in enumerate([(w, inp, 1), (w, w, 3), (4 * w, w, 1)], start=1):
      conv(f"{t}.conv{n}", p + (f"conv{n}",), o, i, ks)
      bn(f"{t}.bn{n}", p + (f"bn{n}",), o)
    if inp != 4 * w:
      conv(f"{t}.downsample.0", p + ("downsample_conv",), 4 * w, inp, 1)
      bn(f"{t}.downsample.1", p + ("downsample_bn",), 4 * w)
    inp = 4 * w
  for i, c in enumerate(chans):
    if i == 0:
      conv_bn("FENet.transition1.0", fe + ("transition1_0_0",), c, inp, 3)
    for k in range(i):
      o = c if k == i - 1 else inp
      conv_bn(f"FENet.transition1.{i}.{k}", fe + (f"transition1_{i}_{k}",), o, inp, 3)
  for s in (2, 3, 4):
    t, p = f"FENet.stage{s}.0", fe + (f"stage{s}",)
    for b, c in enumerate(chans):
      for k in range(model.branch_blocks):
        for n in (1, 2):
          conv(f"{t}.branches.{b}.{k}.conv{n}", p + (f"branches_{b}_{k}", f"conv{n}"), c, c, 3)
          bn(f"{t}.branches.{b}.{k}.bn{n}", p + (f"branches_{b}_{k}", f"bn{n}"), c)
    for i in range(len(chans)):
      for j in range(len(chans)):
        if j > i:
          conv_bn(f"{t}.fuse_layers.{i}.{j}", p + (f"fuse_layers_{i}_{j}",), chans[i], chans[j], 1)
        for k in range(i - j):
          o = chans[i] if k == i - j - 1 else chans[j]
          conv_bn(f"{t}.fuse_layers.{i}.{j}.{k}", p + (f"fuse_layers_{i}_{j}_{k}",), o, chans[j],
                  3)

  nl, c1 = ("getmask",), chans[0]
  ic = c1 * _REDUCE * _REDUCE
  for name in ("g", "theta", "phi"):
    conv(f"SegNet.getmask.{name}", nl + (name,), ic, ic, 1, bias=True)
  conv("SegNet.getmask.W_s", nl + ("W_s",), c1, c1, 1, bias=True)
  keys["SegNet.getmask.gamma_s"] = ("params", nl + ("gamma_s",), "vector", (1,))
  conv("SegNet.getmask.getmask.0", nl + ("getmask_0",), _MASK_WIDTH, c1, 3, bias=True)
  conv("SegNet.getmask.getmask.2", nl + ("getmask_2",), 1, _MASK_WIDTH, 3, bias=True)
  for n, out in enumerate(_PCONV_OUT, start=1):
    conv(f"SegNet.getmask.Pconv_{n}.input_conv", nl + (f"Pconv_{n}", "input_conv"), out, 3, 3,
         bias=True)
    keys[f"SegNet.getmask.Pconv_{n}.mask_conv.weight"] = ("", (), "constant", (out, 3, 3, 3))

  widths = [chans[3], chans[3] + chans[2], sum(chans[1:]), sum(chans) + 1]
  classes = list(model.level_classes) + [model.num_classes]
  for level, (inp, k) in enumerate(zip(widths, classes), start=1):
    t, p = f"SegNet.branch_cls_level_{level}", (f"branch_cls_level_{level}",)
    conv(f"{t}.branch_cls.0", p + ("branch_cls_0",), _CLS_WIDTH, inp, 3, bias=True)
    conv(f"{t}.branch_cls.2", p + ("branch_cls_2",), model.head_width, _CLS_WIDTH, 3, bias=True)
    bn(f"{t}.bn", p + ("bn",), model.head_width)
    keys[f"{t}.fc.weight"] = ("params", p + ("fc", "kernel"), "linear", (k, model.head_width))
    keys[f"{t}.fc.bias"] = ("params", p + ("fc", "bias"), "vector", (k,))
  return keys


def from_official(state: dict[str, np.ndarray], model: Model) -> tuple[dict[str, Any], list[str]]:
  """The official state dict (numpy arrays) as {"params", "batch_stats"} for `model`.

  Exactly the table's keys must be present with the table's shapes; anything else raises a
  one-line ValueError naming the key. Returns (variables, notes): a note where a constant of the
  file (mask conv, Gaussian kernel) differs from the value the architecture fixes.
  """
  from flax import traverse_util

  table = official_key_table(model)
  missing = sorted(set(table) - set(state))
  extra = sorted(set(state) - set(table))
  if missing:
    raise ValueError(f"official HiFi-Net state dict: missing key {missing[0]}"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  if extra:
    raise ValueError(f"official HiFi-Net state dict: unexpected key {extra[0]}"
                     + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
  flat, notes = {}, []
  for key, (collection, path, kind, shape) in table.items():
    value = np.asarray(state[key], np.float32)
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"official HiFi-Net state dict: {key} has shape {tuple(value.shape)}, "
                       f"expected {tuple(shape)}")
    if kind == "constant":
      if key.endswith("mask_conv.weight") and not np.all(value == 1):
        notes.append(f"{key} is not all ones in the file; the model uses ones, as the official "
                     "code initialises and freezes it")
      elif ".smoothing.scale-" in key:
        sigma = float(key.split("scale-")[1].split(".")[0])
        if not np.allclose(value, gaussian_kernel(sigma)[None, None], atol=1e-6):
          notes.append(f"{key} differs from the Gaussian kernel of std {sigma:g} the model uses")
      continue
    if kind == "conv":
      value = np.transpose(value, (2, 3, 1, 0))
    elif kind == "linear":
      value = value.T
    flat[(collection,) + path] = np.ascontiguousarray(value)
  return traverse_util.unflatten_dict(flat), notes
