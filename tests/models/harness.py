"""What the model tests share: variables built cheaply, jitted forwards, and the comparisons with
the PyTorch references (torchvision, timm, open_clip, transformers, deepinv, lpips).

The tests run on a few shared CPU cores, so initialisation uses the rbg generator (XLA compiles
threefry's initialisers several times slower on CPU) and the deep networks run as one compiled
program. A comparison with a reference is relative: the largest absolute difference over the
reference's largest magnitude. torch is imported only inside the helpers that drive a reference,
so that the tests without one do not pay for its import.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# ---------------------------------------------------------------------------------------------
# Variables and forwards.


def _zero_image(model, hw):
  # DnCNN declares its channels (grayscale or colour); every other model takes RGB.
  return jnp.zeros((1, *hw, getattr(model, "channels", 3)))


def init(model, hw=(64, 64), *, jit=False):
  """The model's variables, from one zero image of size hw, with the rbg generator.

  Eager by default: each op compiles once per shape and every test of a file reuses it. jit=True
  compiles the whole init as one program, cheaper for a deep network initialised once or twice.
  """
  def run(key):
    return model.init(key, _zero_image(model, hw), train=False)

  return (jax.jit(run) if jit else run)(jax.random.key(0, impl="rbg"))


_INITS: dict = {}


def init_once(model, hw=(64, 64)):
  """init(model, hw, jit=True), once per configuration: for a file whose tests build the same
  few models again and again. The variables are shared between those tests: never modify them."""
  key = (type(model), repr(model), hw)
  if key not in _INITS:
    _INITS[key] = init(model, hw, jit=True)
  return _INITS[key]


def abstract(model, hw=(64, 64)):
  """The model's variables as jax.ShapeDtypeStructs: nothing initialised, nothing compiled."""
  return jax.eval_shape(lambda: init(model, hw))


_APPLIES: dict = {}


def jit_apply(model, variables, x, **kwargs):
  """model.apply(variables, x, **kwargs) as one program, compiled once per configuration (the
  model and the keyword arguments): on CPU that beats dispatching a deep network op by op."""
  key = (type(model), repr(model), repr(kwargs))
  if key not in _APPLIES:
    _APPLIES[key] = jax.jit(lambda v, x: model.apply(v, x, **kwargs))
  return _APPLIES[key](variables, jnp.asarray(x))


def num_params(tree):
  """How many numbers a tree of arrays (or of jax.ShapeDtypeStructs) holds."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def flat(tree):
  """A nested dict of variables as {key path: leaf}."""
  return traverse_util.flatten_dict(tree)


# ---------------------------------------------------------------------------------------------
# Comparisons.


def assert_leaves_equal(actual, expected):
  """Every leaf of `expected` is in `actual` at the same key path, bit for bit."""
  actual = flat(actual)
  for key, value in flat(expected).items():
    np.testing.assert_array_equal(actual[key], value, err_msg=str(key))


def assert_close(actual, expected, rel, what=""):
  """Same shape, and the max abs difference within `rel` of the reference's magnitude; returns
  the ratio."""
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected)
  where = f"{what}: " if what else ""
  assert actual.shape == expected.shape, f"{where}shape {actual.shape}, reference {expected.shape}"
  magnitude = np.abs(expected).max()
  ratio = float(np.abs(actual - expected).max() / magnitude)
  assert ratio <= rel, f"{where}max abs diff {ratio:.2e} of the magnitude {magnitude:.3g}"
  return ratio


def assert_each_close(actual, expected, rel, what="stage"):
  """assert_close pairwise over two sequences (stages, hidden states) of the same length."""
  actual, expected = list(actual), list(expected)
  assert len(actual) == len(expected), f"{len(actual)} {what}s, the reference {len(expected)}"
  for i, (mine, theirs) in enumerate(zip(actual, expected)):
    assert_close(mine, theirs, rel, f"{what} {i}")


def assert_trees_close(actual, expected, rel):
  """assert_close on every leaf of `actual` against the leaf of `expected` at its key path."""
  expected = flat(expected)
  for key, value in flat(actual).items():
    assert_close(value, expected[key], rel, "/".join(key))


# ---------------------------------------------------------------------------------------------
# Hand-written state dicts.


def batch_norm_shapes(prefix, channels):
  """The state-dict shapes of a torch BatchNorm2d, running statistics and counter included."""
  shapes = {f"{prefix}.{field}": (channels,)
            for field in ("weight", "bias", "running_mean", "running_var")}
  shapes[f"{prefix}.num_batches_tracked"] = ()
  return shapes


def bottleneck_shapes(prefix, stage_sizes, width):
  """The state-dict shapes of torchvision's Bottleneck stages layer1..layer4 (open_clip's
  ModifiedResNet names its own alike), entered at `width` channels; and the channels they end on."""
  shapes, cin = {}, width
  for i, n in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(n):
      p = f"{prefix}layer{i + 1}.{j}"
      shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
      shapes.update(batch_norm_shapes(f"{p}.bn1", planes))
      shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
      shapes.update(batch_norm_shapes(f"{p}.bn2", planes))
      shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
      shapes.update(batch_norm_shapes(f"{p}.bn3", planes * 4))
      if j == 0:
        shapes[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
        shapes.update(batch_norm_shapes(f"{p}.downsample.1", planes * 4))
      cin = planes * 4
  return shapes, cin


def random_state_dict(shapes, seed=0):
  """Random tensors for {key: shape}, drawn in key order: float32 standard normals, but running
  variances uniform(0.5, 1.5) and num_batches_tracked int64 counters."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      state[key] = np.array(3, np.int64)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state[key] = rng.standard_normal(shape).astype(np.float32)
  return state


# ---------------------------------------------------------------------------------------------
# The torch references.


def nchw(x_nhwc):
  """An NHWC numpy batch as the NCHW torch tensor the references take."""
  import torch

  return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))


def _numpy(output):
  if isinstance(output, (list, tuple)):
    return [_numpy(o) for o in output]
  a = output.detach().numpy()
  return (a.transpose(0, 2, 3, 1) if a.ndim == 4 else a).copy()


def torch_forward(net, x_nhwc, taps=None):
  """net's output on an NHWC numpy batch, without gradients, and the outputs of the modules in
  `taps` ({name: module}, hooked for this call only): numpy copies, the 4-d ones NHWC."""
  import torch

  got, hooks = {}, []
  for name, module in (taps or {}).items():
    # Copied at once: an in-place ReLU further on would overwrite the tensor.
    hooks.append(module.register_forward_hook(
        lambda m, i, o, name=name: got.update({name: _numpy(o)})))
  try:
    with torch.no_grad():
      out = net(nchw(x_nhwc))
  finally:
    for hook in hooks:
      hook.remove()
  return _numpy(out), got


def numpy_state(net, prefix=""):
  """net's state dict as numpy copies (net's own tensors change as it trains), keys prefixed."""
  return {prefix + k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def randomise_batch_norms(net, calibration):
  """net, in eval mode, with random batch-norm affine parameters and running statistics.

  Scales uniform(0.5, 1.5), shifts N(0, 0.2): a zero-initialised scale would hide its branch. The
  running statistics are those of one training-mode forward of `calibration` (a batch, or the
  shape of one that torch.randn draws after the affine parameters), then perturbed: random, yet
  of the scale of real activations, so eval-mode outputs neither vanish nor explode.
  """
  import torch

  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0.0, 0.2)
      bn.momentum = 1.0  # the running statistics become the batch's
    net.train()
    net(calibration if torch.is_tensor(calibration) else torch.randn(*calibration))
    for bn in bns:
      bn.momentum = 0.1
      bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean))
      bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.3))
  return net.eval()


@contextlib.contextmanager
def training(net, state):
  """net in train mode inside the block, then back to `state` (numpy) and eval mode: a
  module-scoped reference stays as the other tests expect it."""
  import torch

  net.train()
  try:
    yield net
  finally:
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    net.eval()
