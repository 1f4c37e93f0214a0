"""Image transforms as small registered ops, parsed from big_vision-style strings.

A method's config states its input transform as a string such as

  "degrade(3)|resize(256)|central_crop(224)|flip_lr|normalize('imagenet')"

so that a robustness protocol is config, not code. Ops run in order on PIL images, written in
NumPy/PIL so that they run inside grain workers; the result is an HWC array, uint8 unless the
last op is `normalize`, which gives float32. Resizing and cropping follow torchvision's PIL code
path, the one the benchmark's official methods use, so that accuracies compare.

An op is registered as a factory: called with the op's (literal) arguments it validates them and
returns a picklable callable `(img, rng) -> img`. Random ops draw from the `np.random.Generator`
the caller passes, so an input pipeline can make them reproducible per example.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import numbers
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from iab_jax.data import degradations

Op = tuple[str, tuple, dict]  # (name, positional args, keyword args), canonical


Size = tuple[int, int] | None  # (height, width) of an op's output; None: depends on the input
# How an op changes the image size: "keep" (same size out as in), or a function of the op's
# canonical (args, kwargs) giving its output size, None when that depends on the input.
SizeRule = str | Callable[[tuple, dict], Size]


@dataclasses.dataclass(frozen=True)
class _OpInfo:
  factory: Callable[..., Callable]
  random: bool | Callable[[tuple, dict], bool]  # draws from the rng (a rule: for these args)
  degradation: bool  # changes image content the way a test-time degradation does
  to_array: bool  # returns an array (or a dict of arrays): only array_in ops may follow it
  size: SizeRule  # what the op does to the image size (see SizeRule)
  array_in: bool = False  # also accepts the array an earlier to_array op returned
  emits: tuple[str, ...] = ()  # per-example values it returns beside the image (see register)


_REGISTRY: dict[str, _OpInfo] = {}


def register(name: str, *, size: SizeRule, random: bool | Callable[[tuple, dict], bool] = False,
             degradation: bool = False,
             to_array: bool = False, array_in: bool = False, emits: Sequence[str] = ()):
  """Decorator registering an op factory under `name`.

  The factory's signature is the op's signature in spec strings; it must return a picklable
  callable `(img, rng) -> img` (a module-level function bound with functools.partial), since grain
  pickles transforms into its worker processes. `size` states what the op does to the image
  size, so that a config can be checked to give one shape for images of any size.

  img is an RGB PIL image, or for an `array_in` op also the array (uint8 or float32, (..., H, W,
  3)) or dict of arrays an earlier `to_array` op returned. An op that `emits` names returns
  `(img, {name: value})`: per-example values drawn with the image (DNA-Det's transformation id,
  the label of its pretext task), which the input pipeline puts into the example beside it.
  """
  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"transform op {name!r} is already registered")
    _REGISTRY[name] = _OpInfo(factory, random, degradation, to_array, size, array_in,
                              tuple(emits))
    return factory
  return wrap


def known_ops() -> list[str]:
  return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------------
# Parsing and canonical form.


def _signature_text(name: str) -> str:
  return f"{name}{inspect.signature(_REGISTRY[name].factory)}"


def _canonical(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Op:
  """Binds the arguments to the factory's signature and drops trailing defaults.

  "flip_lr", "flip_lr(0.5)" and "flip_lr(p=0.5)" are the same op; comparing canonical forms is
  what lets `strip_prefix` match a cache's spec against a method's spec.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown transform op {name!r}; known ops: {', '.join(known_ops())}")
  signature = inspect.signature(_REGISTRY[name].factory)
  try:
    bound = signature.bind(*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad arguments for transform op {name!r} ({e}); "
                     f"expected {_signature_text(name)}") from None
  positional_params = [p for p in signature.parameters.values()
                       if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  values = [bound.arguments.get(p.name, p.default) for p in positional_params]
  needed = [i for i, (p, v) in enumerate(zip(positional_params, values))
            if p.default is p.empty or v != p.default]
  positional = tuple(values[:needed[-1] + 1]) if needed else ()
  keyword = {p.name: bound.arguments[p.name] for p in signature.parameters.values()
             if p.kind == p.KEYWORD_ONLY and p.name in bound.arguments
             and bound.arguments[p.name] != p.default}
  for p in signature.parameters.values():  # fork(**named): the names in sorted order
    if p.kind == p.VAR_KEYWORD:
      keyword.update(sorted(bound.arguments.get(p.name, {}).items()))
  return name, positional, keyword


def _op_text(op: Op) -> str:
  name, args, kwargs = op
  if not args and not kwargs:
    return name
  parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
  return f"{name}({', '.join(parts)})"


def _spec_text(ops: Sequence[Op]) -> str:
  return "|".join(_op_text(op) for op in ops)


def _literal(node: ast.AST, spec: str, op_name: str):
  try:
    return ast.literal_eval(node)
  except ValueError:
    raise ValueError(f"argument {ast.unparse(node)!r} of transform op {op_name!r} in {spec!r} "
                     "is not a Python literal") from None


def _parse_ops(spec: str) -> list[Op]:
  """Splits a spec into canonical ops; args are Python literals, as in big_vision."""
  if not isinstance(spec, str):
    raise ValueError(f"transform spec must be a string, got {spec!r}")
  text = spec.strip()
  if not text:
    return []
  # "a|b(1)|c" is a valid Python expression (bitwise-or chain), which keeps a "|" inside a
  # string argument from splitting an op.
  try:
    tree = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"cannot parse transform spec {spec!r}: {e.msg}") from None
  nodes = []
  while isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.BitOr):
    nodes.append(tree.right)
    tree = tree.left
  nodes.append(tree)
  ops = []
  for node in reversed(nodes):
    if isinstance(node, ast.Name):
      ops.append(_canonical(node.id, (), {}))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      if any(isinstance(a, ast.Starred) for a in node.args) or any(
          k.arg is None for k in node.keywords):
        raise ValueError(f"transform op {name!r} in {spec!r}: *args/**kwargs are not allowed")
      args = [_literal(a, spec, name) for a in node.args]
      kwargs = {k.arg: _literal(k.value, spec, name) for k in node.keywords}
      ops.append(_canonical(name, args, kwargs))
    else:
      raise ValueError(f"cannot parse transform op {ast.unparse(node)!r} in {spec!r}; "
                       "expected name or name(args)")
  return ops


def _is_random(op: Op) -> bool:
  rule = _REGISTRY[op[0]].random
  return bool(rule(op[1], op[2]) if callable(rule) else rule)


def _is_noop(op: Op) -> bool:
  # degrade(0) lets a level sweep write "degrade({level})|..." without losing the cache at level 0.
  return op[0] == "degrade" and op[1] == (0,)


# ---------------------------------------------------------------------------------------------
# Transform.


class Transform:
  """A parsed op list, callable on one image.

  Attributes:
    ops: canonical (name, args, kwargs) of each op, in order.
  """

  def __init__(self, ops: Sequence[Op]):
    self.ops = [_canonical(name, tuple(args), dict(kwargs)) for name, args, kwargs in ops]
    array = None  # the op that turned the image into an array, once one has
    for name, _, _ in self.ops:
      if array is not None and not _REGISTRY[name].array_in:
        raise ValueError(f"transform op {name!r} takes an image, but {array!r} before it "
                         f"returns an array, in {self.spec!r}")
      if _REGISTRY[name].to_array:
        array = name
    self._fns = []
    for op in self.ops:
      name, args, kwargs = op
      try:
        self._fns.append(_REGISTRY[name].factory(*args, **kwargs))
      except ValueError as e:
        raise ValueError(f"transform op {_op_text(op)!r}: {e}") from None

  @property
  def spec(self) -> str:
    """Canonical spec string; parse(t.spec) rebuilds an equal transform."""
    return _spec_text(self.ops)

  @property
  def is_random(self) -> bool:
    return any(_is_random(op) for op in self.ops)

  @property
  def has_degradation(self) -> bool:
    return any(_REGISTRY[op[0]].degradation and not _is_noop(op) for op in self.ops)

  @property
  def output_size(self) -> Size:
    """(height, width) of every output whatever the input size, or None if it depends on it."""
    size: Size = None
    for name, args, kwargs in self.ops:
      rule = _REGISTRY[name].size
      if rule != "keep":
        size = rule(args, kwargs)
    return size

  @property
  def is_float(self) -> bool:
    """True if the output is float32 (the last op normalizes), False for uint8."""
    return bool(self.ops) and self.ops[-1][0] in ("normalize", "dct")

  @property
  def emits(self) -> tuple[str, ...]:
    """The per-example values (besides the image) its ops draw, e.g. ("transform_id",)."""
    return tuple(n for name, _, _ in self.ops for n in _REGISTRY[name].emits)

  def __call__(self, img, rng: np.random.Generator | None = None):
    """Applies the ops to an RGB PIL image or HxWx3 uint8 array; returns an HWC array (or what
    the last op returns: a stack of views, a dict of arrays)."""
    return self.apply(img, rng)[0]

  def apply(self, img, rng: np.random.Generator | None = None):
    """(the transformed image, {name: value} of what the ops emit)."""
    if isinstance(img, np.ndarray):
      if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {img.dtype} {img.shape}")
      img = Image.fromarray(np.ascontiguousarray(img))
    elif not isinstance(img, Image.Image):
      raise ValueError(f"expected a PIL image or an HxWx3 uint8 array, got {type(img)}")
    if img.mode != "RGB":
      img = img.convert("RGB")
    if rng is None and self.is_random:
      # A silent fresh seed would make evaluation and resumed training irreproducible.
      raise ValueError(f"transform {self.spec!r} has random ops; pass an np.random.Generator")
    emitted = {}
    for fn, (name, _, _) in zip(self._fns, self.ops):
      img = fn(img, rng)
      if _REGISTRY[name].emits:
        img, values = img
        emitted.update(values)
    if isinstance(img, Image.Image):
      img = np.array(img, dtype=np.uint8)
    return img, emitted

  def __repr__(self) -> str:
    return f"Transform({self.spec!r})"


def parse(spec: str) -> Transform:
  """Parses "op1(args)|op2|..." into a Transform; "" is the identity (uint8 output)."""
  return Transform(_parse_ops(spec))


def strip_prefix(spec: str, prefix: str) -> str | None:
  """The spec of what remains of `spec` after the ops of `prefix`, or None if it doesn't start so.

  A cache of images stored after `prefix` can serve `spec` exactly when this is not None; the
  remaining spec ("" if nothing remains) is what still has to run on the cached images.
  """
  ops = [op for op in _parse_ops(spec) if not _is_noop(op)]
  head = [op for op in _parse_ops(prefix) if not _is_noop(op)]
  if ops[:len(head)] != head:
    return None
  return _spec_text(ops[len(head):])


def is_degradation_free(spec: str | Transform) -> bool:
  transform = spec if isinstance(spec, Transform) else parse(spec)
  return not transform.has_degradation


# ---------------------------------------------------------------------------------------------
# Ops. Each applied function takes (img, rng) first so that functools.partial binds the rest.


def _check_size(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{what} must be a positive integer, got {value!r}")
  return int(value)


def _height_width(size, width) -> tuple[int, int]:
  """(h, w) from op(size) with a square size, op((h, w)) or op(h, w)."""
  if width is not None:
    return _check_size(size, "height"), _check_size(width, "width")
  if isinstance(size, (tuple, list)):
    if len(size) != 2:
      raise ValueError(f"size must be an int or (height, width), got {size!r}")
    return _check_size(size[0], "height"), _check_size(size[1], "width")
  size = _check_size(size, "size")
  return size, size


def _apply_degrade(img, rng, *, level):
  del rng
  return degradations.degrade(img, level)


def _apply_downsample(img, rng, *, scale):
  del rng
  return degradations.downsample(img, scale)


def _apply_jpeg(img, rng, *, quality):
  del rng
  return degradations.jpeg(img, quality)


def _apply_blur(img, rng, *, sigma):
  del rng
  return degradations.gaussian_blur(img, sigma)


@register("degrade", size="keep", degradation=True)
def degrade(level):
  """Benchmark degradation level 0..6 (see degradations.LEVELS)."""
  return functools.partial(_apply_degrade, level=degradations.check_level(level))


@register("downsample", size="keep", degradation=True)
def downsample(scale):
  return functools.partial(_apply_downsample, scale=degradations.check_scale(scale))


@register("jpeg", size="keep", degradation=True)
def jpeg(quality):
  return functools.partial(_apply_jpeg, quality=degradations.check_quality(quality))


@register("blur", size="keep", degradation=True)
def blur(sigma):
  return functools.partial(_apply_blur, sigma=degradations.check_sigma(sigma))


_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
  """(w, h) after torchvision's Resize(size) with an int: shorter side to size, long truncated."""
  short, long = (width, height) if width <= height else (height, width)
  # torchvision's order of operations, int(size * long / short), decides the rounding.
  new_short, new_long = size, int(size * long / short)
  return (new_short, new_long) if width <= height else (new_long, new_short)


def _resize_shorter_side(img, rng, *, size, resample, enlarge_only=False):
  del rng
  if enlarge_only and min(img.size) >= size:
    return img
  new_size = shorter_side_size(*img.size, size)
  if new_size == img.size:
    return img  # torchvision returns the input unchanged here
  return img.resize(new_size, resample)


def _resize_exact(img, rng, *, height, width, resample):
  del rng
  if img.size == (width, height):
    return img
  return img.resize((width, height), resample)


def _resize_size(args, kwargs) -> Size:
  del kwargs
  if len(args) == 2 or isinstance(args[0], (tuple, list)):  # resize(h, w): exact
    return _height_width(*args) if len(args) == 2 else _height_width(args[0], None)
  return None  # resize(s): the longer side follows the aspect ratio


@register("resize", size=_resize_size)
def resize(size, width=None, *, method="bilinear", enlarge_only=False):
  """resize(s): shorter side to s keeping the aspect ratio; resize(h, w): exactly h x w.

  enlarge_only (resize(s) only): leave an image whose shorter side is already >= s as it is, so
  that a random crop of s keeps the native pixels (OFA's crops of COCO photos)."""
  if method not in _RESAMPLING:
    raise ValueError(f"unknown resize method {method!r}; known: {', '.join(_RESAMPLING)}")
  resample = _RESAMPLING[method]
  if width is None and not isinstance(size, (tuple, list)):
    return functools.partial(_resize_shorter_side, size=_check_size(size, "size"),
                             resample=resample, enlarge_only=bool(enlarge_only))
  if enlarge_only:
    raise ValueError("resize(h, w) resizes exactly; enlarge_only is for resize(s)")
  height, width = _height_width(size, width)
  return functools.partial(_resize_exact, height=height, width=width, resample=resample)


def _zero_pad(img, left, top, right, bottom):
  canvas = Image.new(img.mode, (img.width + left + right, img.height + top + bottom), 0)
  canvas.paste(img, (left, top))
  return canvas


def _central_crop(img, rng, *, height, width):
  del rng
  if width > img.width or height > img.height:
    # torchvision's CenterCrop pads with zeros to at least the crop size, the odd pixel on the
    # right/bottom.
    dw, dh = max(0, width - img.width), max(0, height - img.height)
    img = _zero_pad(img, dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2)
    if img.size == (width, height):
      return img
  # round() is Python's half-to-even, as in torchvision.
  top = int(round((img.height - height) / 2.0))
  left = int(round((img.width - width) / 2.0))
  return img.crop((left, top, left + width, top + height))


def _crop_size(args, kwargs) -> Size:
  del kwargs
  return _height_width(*args) if len(args) == 2 else _height_width(args[0], None)


@register("central_crop", size=_crop_size)
def central_crop(size, width=None):
  """central_crop(s) or central_crop(h, w), torchvision CenterCrop semantics."""
  height, width = _height_width(size, width)
  return functools.partial(_central_crop, height=height, width=width)


def _random_crop(img, rng, *, height, width):
  # torchvision's RandomCrop(pad_if_needed=True) pads each side by the whole shortfall, so the
  # image lands at a random place inside the crop rather than always in the middle.
  dw, dh = max(0, width - img.width), max(0, height - img.height)
  if dw or dh:
    img = _zero_pad(img, dw, dh, dw, dh)
  top = int(rng.integers(0, img.height - height + 1))
  left = int(rng.integers(0, img.width - width + 1))
  return img.crop((left, top, left + width, top + height))


@register("random_crop", size=_crop_size, random=True)
def random_crop(size, width=None):
  """random_crop(s) or random_crop(h, w): uniform position, zero padding if the image is small."""
  height, width = _height_width(size, width)
  return functools.partial(_random_crop, height=height, width=width)


def _flip_lr(img, rng, *, p):
  if rng.random() < p:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return img


@register("flip_lr", size="keep", random=True)
def flip_lr(p=0.5):
  """Horizontal flip with probability p."""
  if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
    raise ValueError(f"flip probability must be in [0, 1], got {p!r}")
  return functools.partial(_flip_lr, p=float(p))


# Per-channel mean/std in 0-1 units of the pretrained backbones the methods start from.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _normalize(img, rng, *, mean, std):
  del rng
  if isinstance(img, np.ndarray) and img.dtype != np.uint8:
    raise ValueError(f"normalize expects uint8 pixels, got a {img.dtype} array")
  # float32 throughout, as torchvision's ToTensor + Normalize compute it.
  x = np.asarray(img, dtype=np.float32) / np.float32(255)
  return (x - mean) / std


def _channel_triple(value, what: str) -> np.ndarray:
  try:
    array = np.asarray(value, dtype=np.float32)
  except (TypeError, ValueError):
    array = None
  if array is None or array.shape != (3,) or not np.all(np.isfinite(array)):
    raise ValueError(f"normalize {what} must be 3 finite numbers, got {value!r}")
  return array


@register("normalize", size="keep", to_array=True, array_in=True)
def normalize(kind=None, *, mean=None, std=None):
  """normalize('imagenet'|'clip'|'half'|'unit') or normalize(mean=(..), std=(..)) in 0-1 units;
  of an image, or of the uint8 (..., H, W, 3) array an op like random_crops returned."""
  if kind is not None:
    if mean is not None or std is not None:
      raise ValueError("give either a normalization kind or mean and std, not both")
    if kind not in NORMALIZATIONS:
      raise ValueError(f"unknown normalization {kind!r}; known: {', '.join(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[kind]
  elif mean is None or std is None:
    raise ValueError("normalize needs a kind or both mean and std")
  mean, std = _channel_triple(mean, "mean"), _channel_triple(std, "std")
  if np.any(std <= 0):
    raise ValueError(f"normalize std must be > 0, got {tuple(std.tolist())}")
  return functools.partial(_normalize, mean=mean, std=std)


def _dct(img, rng, *, log):
  del rng
  from scipy import fft  # only runs that use the op pay for scipy's import

  # float32 in, float32 out, as the official loader (scipy.fftpack on a float32 array) computes
  # it; an orthonormal DCT-II over height and width, each channel on its own.
  pixels = np.asarray(img, dtype=np.float32)
  magnitude = np.abs(fft.dctn(pixels, type=2, norm="ortho", axes=(0, 1)))
  if log:
    # GANDCTAnalysis's log_scale: the epsilon keeps a zero coefficient finite.
    return np.log(magnitude + np.float32(1e-12)).astype(np.float32)
  return magnitude.astype(np.float32)


@register("dct", size="keep", to_array=True)
def dct(log=True):
  """Per-channel 2-D DCT-II (orthonormal) magnitudes of the 0-255 pixels, float32; log(|c|+1e-12)
  when log, else |c| (the official DCT-CNN loader: no /255 scaling, no log)."""
  if not isinstance(log, bool):
    raise ValueError(f"dct log must be True or False, got {log!r}")
  return functools.partial(_dct, log=log)


# ---------------------------------------------------------------------------------------------
# Multi-view ops: several views of one image in one example, of a fixed shape.


def _random_crops(img, rng, *, n, height, width):
  return np.stack([np.asarray(_random_crop(img, rng, height=height, width=width), np.uint8)
                   for _ in range(n)])


@register("random_crops", size=lambda args, kwargs: _crop_size(args[1:], kwargs), random=True,
          to_array=True)
def random_crops(n, size, width=None):
  """random_crops(n, s) or random_crops(n, h, w): n independent random_crop views of the image,
  a uint8 (n, h, w, 3) array (DNA-Det's 16 crops of 64x64 per training image)."""
  n = _check_size(n, "number of crops")
  height, width = _height_width(size, width)
  return functools.partial(_random_crops, n=n, height=height, width=width)


def _fork(img, rng, *, branches):
  return {name: branch(img, rng) for name, branch in branches}


def _fork_branches(kwargs) -> list[tuple[str, Transform]]:
  return [(name, parse(spec)) for name, spec in kwargs.items()]


def _fork_size(args, kwargs) -> Size:
  del args
  sizes = {t.output_size for _, t in _fork_branches(kwargs)}
  return sizes.pop() if len(sizes) == 1 else None


@register("fork", size=_fork_size, to_array=True,
          random=lambda args, kwargs: any(t.is_random for _, t in _fork_branches(kwargs)))
def fork(**branches):
  """fork(name=spec, ...): a dict {name: the spec applied to the image}, several views of one
  image in one example (PatchCraft's rich and poor textures). Comes last; a branch's spec must
  not emit values."""
  if not branches:
    raise ValueError("fork needs at least one name=spec branch")
  parsed = []
  for name, spec in branches.items():
    if not isinstance(spec, str):
      raise ValueError(f"fork branch {name!r} must be a transform spec string, got {spec!r}")
    branch = parse(spec)
    if branch.emits:
      raise ValueError(f"fork branch {name!r} emits {', '.join(branch.emits)}; an op that emits "
                       "must come before the fork")
    parsed.append((name, branch))
  return functools.partial(_fork, branches=tuple(parsed))


# Methods' own ops register themselves in these modules; imported here so that any config's spec
# can name them.
from iab_jax.data import patches, transformations  # noqa: E402,F401  pylint: disable=wrong-import-position
