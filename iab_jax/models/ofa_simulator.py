"""OFA's stochastic fingerprint simulator (Fei et al., AAAI 2026): an encoder and a decoder whose
architecture is drawn at random on every forward pass, trained on real images to reconstruct them.

Each decoder architecture leaves its own fingerprint in the reconstructions; OFA's extractor learns
to tell the architectures apart, so the simulator is a source of ~1.68e12 "generators" without one
synthetic image. The facts (../shared/METHODS.md §3.1, the authors' encoder2.py and
decoder24_with_graph.py):

  Encoder (fixed): conv3x3 3->w0 + Swish; three levels of [conv3x3 stride 2, ResidualBlock]
    (ResidualBlock = conv3x3-BN-Swish-conv3x3-BN, + input, Swish) with widths w0, w1, w2; then
    conv3x3 w2->w2 + ResidualBlock. Features F0 w0@H/2, F1 w1@H/4, F2 w2@H/8, F3 w2@H/8.
  Decoder (stochastic): start from F3 (3 up-blocks), F1 (2) or F0 (1), no skip connections;
    up-block in->out = conv1x1 in->out, VariUp (bilinear | nearest | bicubic | pixel shuffle),
    then 1 or 2 VariStruct cells with a residual around them (cells(h) + h); conv3x3 out->3 last,
    no output activation. A VariStruct cell applies MoKConv (out->out), an activation (LeakyReLU
    0.2 | GELU | SiLU) and a norm (BatchNorm | InstanceNorm | GroupNorm) in one of the 3! orders.
  MoKConv: K base conv3x3 (with bias) mixed per sample and per output channel by coefficients
    w = P(router(h)) of shape (K, C_out), no softmax; router = conv3x3 s2 -> LReLU -> conv3x3 s2 ->
    LReLU -> global average pool -> linear -> LReLU, router_dim wide.

An architecture is data, an int32 vector of ARCH_LEN = 25 entries:
  [start, then for each decoder level l = 0, 1, 2 (the up-blocks w2->d0, d0->d1, d1->d2):
   upsampler, num_cells (1 or 2), then for each of the MAX_CELLS cell slots: activation, norm,
   order]
start 0 runs levels 0, 1, 2 from F3 (H/8), 1 runs levels 1, 2 from F1 (H/4), 2 runs level 2 from F0
(H/2). In the canonical form the entries of unused levels (num_cells included) and of an unused
second cell are 0, so distinct canonical vectors are distinct architectures.

One compiled program serves every architecture: the choices are traced indices into lax.switch /
lax.cond over pure functions of explicitly declared parameters, so a branch that is not chosen is
not executed and its parameters get zero gradient. Each level owns its parameters (conv1x1,
pixel-shuffle conv, and per cell slot a MoKConv, BatchNorm and GroupNorm affines), shared by all
the choices that use them, as in the authors' code.

Normalisation (eps 1e-5 everywhere, statistics in float32):
  - the encoder's BatchNorms are torch's BatchNorm2d and keep running statistics in
    "batch_stats" (train=True uses the batch's statistics and updates them);
  - the decoder's BatchNorm always normalises with the batch's own statistics (then its affine)
    and keeps no running statistics: averages over randomly ordered cells would mix statistics of
    incompatible positions (after a conv, after an activation, ...). The authors' simulator runs in
    torch train mode, which uses the batch statistics too. InstanceNorm has no affine (torch's
    default); GroupNorm has an affine and `groups` groups, or, where a width is not a multiple of
    `groups` (small test widths), the largest divisor of the width below `groups`.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from iab_jax.models.resnet import BatchNorm

# ---------------------------------------------------------------------------------------------
# The search space.

UPSAMPLERS = ("bilinear", "nearest", "bicubic", "pixel_shuffle")
ACTIVATIONS = ("leaky_relu", "gelu", "silu")
NORMS = ("batch", "instance", "group")
CELL_OPS = ("conv", "act", "norm")
ORDERS = tuple(itertools.permutations(CELL_OPS))
NUM_LEVELS = 3
MAX_CELLS = 2
STARTS = ("H/8", "H/4", "H/2")  # start s: from F3, F1, F0, running NUM_LEVELS - s up-blocks
CELL_LEN = 3  # activation, norm, order
LEVEL_LEN = 2 + CELL_LEN * MAX_CELLS  # upsampler, num_cells, cells
ARCH_LEN = 1 + NUM_LEVELS * LEVEL_LEN

# ORDERS as indices into CELL_OPS, a table the traced order index selects from.
_ORDER_TABLE = np.array([[CELL_OPS.index(op) for op in order] for order in ORDERS], np.int32)


def _level_slice(level: int) -> slice:
  return slice(1 + level * LEVEL_LEN, 1 + (level + 1) * LEVEL_LEN)


def sample_architecture(key: jax.Array) -> jax.Array:
  """One canonical architecture (ARCH_LEN,) int32, as the paper samples: the start scale uniform
  over STARTS, then per used level an upsampler uniform over UPSAMPLERS and 1..MAX_CELLS cells,
  each cell an activation, norm and order uniform over theirs. Jittable."""
  k_start, k_up, k_cells, k_act, k_norm, k_order = jax.random.split(key, 6)
  start = jax.random.randint(k_start, (), 0, len(STARTS))
  upsampler = jax.random.randint(k_up, (NUM_LEVELS,), 0, len(UPSAMPLERS))
  num_cells = jax.random.randint(k_cells, (NUM_LEVELS,), 1, MAX_CELLS + 1)
  cell_shape = (NUM_LEVELS, MAX_CELLS)
  cells = jnp.stack([jax.random.randint(k_act, cell_shape, 0, len(ACTIVATIONS)),
                     jax.random.randint(k_norm, cell_shape, 0, len(NORMS)),
                     jax.random.randint(k_order, cell_shape, 0, len(ORDERS))], axis=-1)
  # Start s uses the last NUM_LEVELS - s levels; unused entries are 0 (canonical form).
  level_used = jnp.arange(NUM_LEVELS) >= start
  cell_used = level_used[:, None] & (jnp.arange(MAX_CELLS)[None, :] < num_cells[:, None])
  cells = jnp.where(cell_used[..., None], cells, 0).reshape(NUM_LEVELS, CELL_LEN * MAX_CELLS)
  head = jnp.where(level_used[:, None], jnp.stack([upsampler, num_cells], axis=-1), 0)
  levels = jnp.concatenate([head, cells], axis=-1).reshape(-1)
  return jnp.concatenate([start[None], levels]).astype(jnp.int32)


def sample_architectures(key: jax.Array, n: int) -> jax.Array:
  """n independent canonical architectures, (n, ARCH_LEN) int32."""
  return jax.vmap(sample_architecture)(jax.random.split(key, n))


def architecture_from_seed(seed: int) -> np.ndarray:
  """The architecture sample_architecture draws from jax.random.key(seed): a name for it."""
  return np.asarray(sample_architecture(jax.random.key(seed)))


def canonical(arch: Sequence[int] | np.ndarray) -> np.ndarray:
  """arch with the entries of unused levels and cells set to 0; a ValueError (one line) if a used
  entry is out of range or the vector has the wrong length."""
  arch = np.asarray(arch)
  if arch.shape != (ARCH_LEN,) or not np.issubdtype(arch.dtype, np.integer):
    raise ValueError(f"an architecture is {ARCH_LEN} integers, got shape {arch.shape} of "
                     f"{arch.dtype}")
  out = np.zeros(ARCH_LEN, np.int32)

  def check(value, size, what):
    if not 0 <= value < size:
      raise ValueError(f"architecture {arch.tolist()}: {what} {value} is out of range [0, {size})")
    return value

  start = out[0] = check(int(arch[0]), len(STARTS), "start")
  for level in range(start, NUM_LEVELS):
    at = _level_slice(level).start
    out[at] = check(int(arch[at]), len(UPSAMPLERS), f"level {level + 1} upsampler")
    num_cells = int(arch[at + 1])
    if not 1 <= num_cells <= MAX_CELLS:
      raise ValueError(f"architecture {arch.tolist()}: level {level + 1} has {num_cells} cells, "
                       f"not 1..{MAX_CELLS}")
    out[at + 1] = num_cells
    for cell in range(num_cells):
      c = at + 2 + CELL_LEN * cell
      out[c] = check(int(arch[c]), len(ACTIVATIONS), f"level {level + 1} cell {cell + 1} act")
      out[c + 1] = check(int(arch[c + 1]), len(NORMS), f"level {level + 1} cell {cell + 1} norm")
      out[c + 2] = check(int(arch[c + 2]), len(ORDERS), f"level {level + 1} cell {cell + 1} order")
  return out


def describe(arch: Sequence[int] | np.ndarray) -> str:
  """A readable architecture, e.g. "start H/8; level 1: bicubic, [norm=group -> conv ->
  act=gelu]; level 2: ...". Levels are numbered 1..3 from the coarsest up-block (H/8 -> H/4)."""
  arch = canonical(arch)
  parts = [f"start {STARTS[arch[0]]}"]
  for level in range(arch[0], NUM_LEVELS):
    at = _level_slice(level).start
    cells = []
    for cell in range(arch[at + 1]):
      act, norm, order = arch[at + 2 + CELL_LEN * cell: at + 2 + CELL_LEN * (cell + 1)]
      named = {"conv": "conv", "act": f"act={ACTIVATIONS[act]}", "norm": f"norm={NORMS[norm]}"}
      cells.append("[" + " -> ".join(named[op] for op in ORDERS[order]) + "]")
    parts.append(f"level {level + 1}: {UPSAMPLERS[arch[at]]}, " + ", ".join(cells))
  return "; ".join(parts)


def count_per_level() -> int:
  """Distinct up-blocks: upsamplers x (cells per level 1..MAX_CELLS, each activation x norm x
  order). 4 x (54 + 54^2) = 11,880 for the paper's space."""
  per_cell = len(ACTIVATIONS) * len(NORMS) * len(ORDERS)
  return len(UPSAMPLERS) * sum(per_cell ** v for v in range(1, MAX_CELLS + 1))


def count_architectures() -> int:
  """Distinct decoders, summed over the start scales: 11880^3 + 11880^2 + 11880 ~ 1.68e12."""
  return sum(count_per_level() ** (NUM_LEVELS - s) for s in range(len(STARTS)))


# ---------------------------------------------------------------------------------------------
# The decoder's operations as pure functions of explicit parameters (NHWC), so that lax.switch
# can choose among them.


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  pad = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_in_branch(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """_conv with the kernel gradient written as a conv XLA's CPU backend runs fast anywhere.

  XLA:CPU rewrites the kernel-gradient conv (batch and features swapped) into its fast layout only
  outside lax.cond / lax.switch branches; inside them it falls back to a naive loop, ~15x slower,
  and every conv of the decoder is inside a branch. Here that conv is stated in the fast layout
  (input channels as the batch, samples as the features). Same numbers, any backend.
  """
  return _conv(x, kernel, stride)


def _conv_in_branch_fwd(x, kernel, stride):
  return _conv(x, kernel, stride), (x, kernel)


def _conv_in_branch_bwd(stride, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _conv(x, kernel, stride), x)
  k, pad = kernel.shape[0], kernel.shape[0] // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  # dK[i, j, c, o] = sum_{n, y, x} xp[n, i + s y, j + s x, c] g[n, y, x, o]: a conv of xp
  # (C_in, H, W, N) with g (h, w, N, C_out) dilated by the stride.
  dk = lax.conv_general_dilated(xp.transpose(3, 1, 2, 0), g.astype(x.dtype).transpose(1, 2, 0, 3),
                                (1, 1), "VALID", rhs_dilation=(stride, stride),
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # A stride-2 conv of an even size never reaches the last padded row: drop what it adds.
  dk = dk[:, :k, :k].transpose(1, 2, 0, 3).astype(kernel.dtype)
  return input_vjp(g)[0], dk


_conv_in_branch.defvjp(_conv_in_branch_fwd, _conv_in_branch_bwd)


def conv2d(x: jax.Array, p: dict, *, stride: int = 1) -> jax.Array:
  """torch's Conv2d with padding k // 2 on every side (so stride 2 halves an even size exactly,
  which Flax's "SAME" does with a different offset). p: kernel (kh, kw, in, out), bias (out,)."""
  return _conv_in_branch(x, p["kernel"].astype(x.dtype), stride) + p["bias"].astype(x.dtype)


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, ...]:
  """torch's bicubic (Keys' cubic convolution, a = -0.75) weights of the 4 taps around a source
  position t in [0, 1) past the lower neighbour."""
  near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
  far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
  return far(t + 1), near(t), near(1 - t), far(2 - t)


# 2x upsampling with half-pixel centres (torch's align_corners=False): output 2i samples the input
# at i - 1/4, output 2i + 1 at i + 1/4. Taps are (offset from i, weight), indices clamped at the
# borders as torch clamps them.
_LINEAR_TAPS = (((-1, 0.25), (0, 0.75)), ((0, 0.75), (1, 0.25)))
_CUBIC_TAPS = (tuple(zip((-2, -1, 0, 1), _cubic_weights(0.75))),
               tuple(zip((-1, 0, 1, 2), _cubic_weights(0.25))))


def _upsample_axis(x: jax.Array, axis: int, taps) -> jax.Array:
  n = x.shape[axis]
  pad = 2
  widths = [(pad, pad) if a == axis else (0, 0) for a in range(x.ndim)]
  padded = jnp.pad(x, widths, mode="edge")
  phases = [sum(w * lax.slice_in_dim(padded, pad + off, pad + off + n, axis=axis)
                for off, w in phase) for phase in taps]
  out = jnp.stack(phases, axis=axis + 1)  # interleave the even and odd outputs
  return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample_bilinear(x: jax.Array) -> jax.Array:
  """F.interpolate(scale_factor=2, mode="bilinear", align_corners=False) on NHWC."""
  return _upsample_axis(_upsample_axis(x, 1, _LINEAR_TAPS), 2, _LINEAR_TAPS)


def upsample_bicubic(x: jax.Array) -> jax.Array:
  """F.interpolate(scale_factor=2, mode="bicubic", align_corners=False) on NHWC (a = -0.75;
  jax.image.resize's "cubic" uses a = -0.5 and so differs)."""
  return _upsample_axis(_upsample_axis(x, 1, _CUBIC_TAPS), 2, _CUBIC_TAPS)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """F.interpolate(scale_factor=2, mode="nearest"): output i takes input i // 2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """torch's PixelShuffle(r) on NHWC: channel c r^2 + i r + j goes to (r h + i, r w + j, c)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, c // (r * r), r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(n, h * r, w * r, c // (r * r))


def batch_norm(x: jax.Array, p: dict, eps: float = 1e-5) -> jax.Array:
  """BatchNorm2d with the batch's statistics (biased variance) and an affine."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))
  y = (xf - mean) * lax.rsqrt(var + eps) * p["scale"] + p["bias"]
  return y.astype(x.dtype)


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """InstanceNorm2d (affine=False): per sample and channel over space."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
  return ((xf - mean) * lax.rsqrt(var + eps)).astype(x.dtype)


def group_count(channels: int, groups: int) -> int:
  """The GroupNorm groups for a width: `groups` when it divides the width, else the largest
  divisor of the width below it (the paper's 32 divides every full-size width)."""
  return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def group_norm(x: jax.Array, p: dict, groups: int, eps: float = 1e-5) -> jax.Array:
  """GroupNorm(groups, C) with an affine; channel c is in group c // (C / groups) as in torch."""
  n, h, w, c = x.shape
  xf = x.astype(jnp.float32).reshape(n, h, w, groups, c // groups)
  mean = jnp.mean(xf, axis=(1, 2, 4), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(1, 2, 4), keepdims=True)
  y = ((xf - mean) * lax.rsqrt(var + eps)).reshape(n, h, w, c) * p["scale"] + p["bias"]
  return y.astype(x.dtype)


def activation(name: str, x: jax.Array, leaky_slope: float = 0.2) -> jax.Array:
  """The cell activations: LeakyReLU(slope), GELU (torch's exact erf form), SiLU."""
  if name == "leaky_relu":
    return jax.nn.leaky_relu(x, leaky_slope)
  if name == "gelu":
    return jax.nn.gelu(x, approximate=False)
  if name == "silu":
    return jax.nn.silu(x)
  raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def mok_conv(p: dict, h: jax.Array, leaky_slope: float = 0.2) -> jax.Array:
  """Mixture-of-kernels conv: sum_k w[n, k, c] * (conv_k(h) + b_k)[n, :, :, c], w = P(router(h)).

  p: kernels (K, 3, 3, C_in, C_out), biases (K, C_out), router_conv1/router_conv2 (stride-2
  convs), router_fc (linear), proj (linear router_dim -> K * C_out, k major as torch's view).
  The K convs run as one conv with K * C_out outputs.
  """
  lrelu = lambda v: jax.nn.leaky_relu(v, leaky_slope)
  r = lrelu(conv2d(h, p["router_conv1"], stride=2))
  r = lrelu(conv2d(r, p["router_conv2"], stride=2))
  r = jnp.mean(r.astype(jnp.float32), axis=(1, 2))
  r = lrelu(r @ p["router_fc"]["kernel"] + p["router_fc"]["bias"])
  w = r @ p["proj"]["kernel"] + p["proj"]["bias"]
  k, _, _, c_in, c_out = p["kernels"].shape
  w = w.reshape(-1, k, c_out).astype(h.dtype)
  kernel = p["kernels"].transpose(1, 2, 3, 0, 4).reshape(3, 3, c_in, k * c_out)
  y = conv2d(h, {"kernel": kernel, "bias": p["biases"].reshape(-1)})
  y = y.reshape(*y.shape[:3], k, c_out)
  return jnp.einsum("nhwkc,nkc->nhwc", y, w)


def varistruct_cell(p: dict, h: jax.Array, spec: jax.Array, *, groups: int,
                    leaky_slope: float) -> jax.Array:
  """One cell: MoKConv, activation spec[0] and norm spec[1] in the order ORDERS[spec[2]].

  The three positions run as a scan whose body switches over (conv, act, norm), so the cell's
  MoKConv appears once in the program whatever its position.
  """
  acts = [lambda v, a=a: activation(a, v, leaky_slope) for a in ACTIVATIONS]
  norms = [lambda v: batch_norm(v, p["batch_norm"]), instance_norm,
           lambda v: group_norm(v, p["group_norm"], groups)]
  ops = [lambda v: mok_conv(p["mok"], v, leaky_slope),
         lambda v: lax.switch(spec[0], acts, v),
         lambda v: lax.switch(spec[1], norms, v)]

  def position(v, op):
    return lax.switch(op, ops, v), None

  h, _ = lax.scan(position, h, jnp.asarray(_ORDER_TABLE)[spec[2]])
  return h


def up_block(p: dict, x: jax.Array, spec: jax.Array, *, groups: int,
             leaky_slope: float) -> jax.Array:
  """One decoder level: conv1x1, VariUp spec[0], spec[1] cells with a residual around them."""
  h = conv2d(x, p["conv_up"])
  upsamplers = [upsample_bilinear, upsample_nearest, upsample_bicubic,
                lambda v: pixel_shuffle(conv2d(v, p["pixel_shuffle"]))]
  h = lax.switch(spec[0], upsamplers, h)

  def cell(j, v):
    return varistruct_cell(p[f"cell{j}"], v, spec[2 + CELL_LEN * j: 2 + CELL_LEN * (j + 1)],
                           groups=groups, leaky_slope=leaky_slope)

  out = cell(0, h)
  for j in range(1, MAX_CELLS):
    out = lax.cond(spec[1] > j, lambda v, j=j: cell(j, v), lambda v: v, out)
  return out + h


# ---------------------------------------------------------------------------------------------
# Parameters, declared by small modules that only create and return them (the branch bodies above
# must not call Linen modules).


def _uniform(bound: float) -> Callable[..., jax.Array]:
  # torch's default Conv2d / Linear init: weights and biases uniform(+-1/sqrt(fan_in)).
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class _WeightParams(nn.Module):
  """A conv or linear layer's kernel and bias, torch-initialised."""
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  fan_in: int

  @nn.compact
  def __call__(self) -> dict:
    init = _uniform(1.0 / math.sqrt(self.fan_in))
    return {"kernel": self.param("kernel", init, self.kernel_shape),
            "bias": self.param("bias", init, self.bias_shape)}


def _conv_params(k: int, c_in: int, c_out: int, name: str) -> _WeightParams:
  return _WeightParams((k, k, c_in, c_out), (c_out,), k * k * c_in, name=name)


def _linear_params(c_in: int, c_out: int, name: str) -> _WeightParams:
  return _WeightParams((c_in, c_out), (c_out,), c_in, name=name)


class _AffineParams(nn.Module):
  features: int

  @nn.compact
  def __call__(self) -> dict:
    return {"scale": self.param("scale", nn.initializers.ones, (self.features,)),
            "bias": self.param("bias", nn.initializers.zeros, (self.features,))}


class _MoKConvParams(nn.Module):
  features: int
  num_kernels: int
  router_dim: int

  @nn.compact
  def __call__(self) -> dict:
    c, k, d = self.features, self.num_kernels, self.router_dim
    init = _uniform(1.0 / math.sqrt(9 * c))
    return {"kernels": self.param("kernels", init, (k, 3, 3, c, c)),
            "biases": self.param("biases", init, (k, c)),
            "router_conv1": _conv_params(3, c, d, "router_conv1")(),
            "router_conv2": _conv_params(3, d, d, "router_conv2")(),
            "router_fc": _linear_params(d, d, "router_fc")(),
            "proj": _linear_params(d, k * c, "proj")()}


class _LevelParams(nn.Module):
  in_features: int
  features: int
  num_kernels: int
  router_dim: int

  @nn.compact
  def __call__(self) -> dict:
    c = self.features
    p = {"conv_up": _conv_params(1, self.in_features, c, "conv_up")(),
         "pixel_shuffle": _conv_params(3, c, 4 * c, "pixel_shuffle")()}
    for j in range(MAX_CELLS):
      p[f"cell{j}"] = _CellParams(c, self.num_kernels, self.router_dim, name=f"cell{j}")()
    return p


class _CellParams(nn.Module):
  features: int
  num_kernels: int
  router_dim: int

  @nn.compact
  def __call__(self) -> dict:
    return {"mok": _MoKConvParams(self.features, self.num_kernels, self.router_dim,
                                  name="mok")(),
            "batch_norm": _AffineParams(self.features, name="batch_norm")(),
            "group_norm": _AffineParams(self.features, name="group_norm")()}


# ---------------------------------------------------------------------------------------------
# The networks.


class ResidualBlock(nn.Module):
  """conv3x3-BN-Swish-conv3x3-BN, + input, Swish (the authors' encoder block)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    c = x.shape[-1]
    conv = lambda name: nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                param_dtype=jnp.float32, kernel_init=_uniform(1 / math.sqrt(9 * c)),
                                bias_init=_uniform(1 / math.sqrt(9 * c)), name=name)
    norm = lambda name: BatchNorm(use_running_average=not train, dtype=self.dtype, name=name)
    h = nn.silu(norm("bn1")(conv("conv1")(x)))
    h = norm("bn2")(conv("conv2")(h))
    return nn.silu(x + h)


class Encoder(nn.Module):
  """The fixed encoder; returns (F0 w0@H/2, F1 w1@H/4, F2 w2@H/8, F3 w2@H/8)."""
  widths: tuple[int, int, int] = (64, 128, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, ...]:
    def conv(c_out, stride, name, h):
      fan_in = 9 * h.shape[-1]
      return nn.Conv(c_out, (3, 3), (stride, stride), padding=((1, 1), (1, 1)),
                     dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_uniform(1 / math.sqrt(fan_in)),
                     bias_init=_uniform(1 / math.sqrt(fan_in)), name=name)(h)

    h = nn.silu(conv(self.widths[0], 1, "stem", x.astype(self.dtype)))
    features = []
    for i, width in enumerate(self.widths):
      h = conv(width, 2, f"down{i}", h)
      h = ResidualBlock(self.dtype, name=f"res{i}")(h, train=train)
      features.append(h)
    h = conv(self.widths[-1], 1, "final_conv", h)
    features.append(ResidualBlock(self.dtype, name="final_res")(h, train=train))
    return tuple(features)


class Decoder(nn.Module):
  """The stochastic decoder: decode(features, arch) for an architecture vector (ARCH_LEN,)."""
  encoder_widths: tuple[int, int, int] = (64, 128, 256)
  decoder_widths: tuple[int, int, int] = (128, 64, 32)
  num_kernels: int = 4
  router_dim: int = 256
  groups: int = 32
  leaky_slope: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], arch: jax.Array) -> jax.Array:
    enc, dec = self.encoder_widths, self.decoder_widths
    # A level's input is F3 or the previous level's output for level 0 ... the shapes must agree
    # for a start scale to skip levels.
    if (dec[0], dec[1]) != (enc[1], enc[0]):
      raise ValueError(f"decoder_widths {dec} must start with encoder_widths[1], "
                       f"encoder_widths[0] (got encoder_widths {enc}): start H/4 feeds F1 where "
                       f"level 1 feeds its output, start H/2 F0 where level 2 feeds its output")
    in_widths = (enc[2], dec[0], dec[1])
    params = [_LevelParams(in_widths[l], dec[l], self.num_kernels, self.router_dim,
                           name=f"level{l}")() for l in range(NUM_LEVELS)]
    out_conv = _conv_params(3, dec[-1], 3, "out_conv")()

    arch = jnp.asarray(arch, jnp.int32)
    f0, f1, _, f3 = (f.astype(self.dtype) for f in features)
    block = lambda l, x: up_block(params[l], x, arch[_level_slice(l)],
                                  groups=group_count(dec[l], self.groups),
                                  leaky_slope=self.leaky_slope)
    # The start scale: levels before it are skipped and the feature of the right scale enters.
    x = lax.cond(arch[0] == 0, lambda: block(0, f3), lambda: f1)
    x = lax.cond(arch[0] <= 1, lambda: block(1, x), lambda: f0)
    x = block(2, x)
    return conv2d(x, out_conv).astype(jnp.float32)


class Simulator(nn.Module):
  """Encoder + stochastic decoder. x: (N, H, W, 3) in [-1, 1] with H, W divisible by 8; arch: one
  architecture (ARCH_LEN,) int32 for the whole batch (traced: any architecture, one program).

  __call__(x, arch, *, train) -> (reconstruction (N, H, W, 3) float32, aux) where
  aux["features"] are the encoder's 4 features; encode / decode run the halves (via
  simulator.apply(variables, ..., method=Simulator.encode)). `train` only concerns the encoder's
  BatchNorms (see the module docstring for the decoder's norms). To run several architectures,
  loop with lax.map or scan over them, not jax.vmap: under vmap every lax.switch / lax.cond
  branch runs for every architecture.
  """
  encoder_widths: tuple[int, int, int] = (64, 128, 256)
  decoder_widths: tuple[int, int, int] = (128, 64, 32)
  num_kernels: int = 4
  router_dim: int = 256
  groups: int = 32
  leaky_slope: float = 0.2
  dtype: str = "float32"

  def setup(self):
    dtype = jnp.dtype(self.dtype)
    self.encoder = Encoder(tuple(self.encoder_widths), dtype)
    self.decoder = Decoder(tuple(self.encoder_widths), tuple(self.decoder_widths),
                           self.num_kernels, self.router_dim, self.groups, self.leaky_slope, dtype)

  def encode(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, ...]:
    if x.shape[1] % 8 or x.shape[2] % 8:
      raise ValueError(f"the simulator needs H and W divisible by 8, got {x.shape[1:3]}")
    return self.encoder(x, train=train)

  def decode(self, features: Sequence[jax.Array], arch: jax.Array) -> jax.Array:
    return self.decoder(features, arch)

  def __call__(self, x: jax.Array, arch: jax.Array, *,
               train: bool) -> tuple[jax.Array, dict[str, Any]]:
    features = self.encode(x, train=train)
    return self.decode(features, arch), {"features": features}
