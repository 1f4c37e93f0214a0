"""PatchForensics: the patch vote and average against Python loops and torch.mode (the official
acc_D_voted), the per-patch cross-entropy against NumPy, the original's initialisation, the
official model's size (METHODS.md section 5) and the import of its checkpoint against a torch
re-statement of the official network (Xception to block 2 + 1x1 conv, DataParallel keys)."""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import patch_forensics as patch_config
from iab_jax.methods import official, patch_forensics

CLASSES23 = [f"c{i}" for i in range(23)]
LAYOUT_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "data_prep", "official_layouts",
                           patch_forensics.OFFICIAL_LAYOUT)


def _method(arg="standard", classes=CLASSES23):
  config = patch_config.get_config(arg)
  patch_forensics.PatchForensics.check_config(config)
  return patch_forensics.PatchForensics(config, classes)


# ---------------------------------------------------------------------------------------------
# Image scores and loss.


def test_vote_and_average_against_loops_and_torch_mode():
  import torch

  rng = np.random.default_rng(0)
  # Few classes and 2x3 patches, so that many images have tied votes.
  logits = rng.normal(size=(400, 2, 3, 4)).astype(np.float32)
  scores = jax.jit(patch_forensics.patch_scores)(jnp.asarray(logits))
  n, h, w, c = logits.shape
  ties = 0
  for i in range(n):
    winners = [int(np.argmax(logits[i, y, x])) for y in range(h) for x in range(w)]
    counts = collections.Counter(winners)
    fractions = [counts[k] / (h * w) for k in range(c)]
    np.testing.assert_allclose(scores["vote"][i], fractions, rtol=0, atol=1e-7)
    most = max(counts.values())
    modes = sorted(k for k in counts if counts[k] == most)
    ties += len(modes) > 1
    # The headline decision: the most voted class, the lowest index among equal counts.
    assert int(np.argmax(scores["vote"][i])) == modes[0]
    softmax = np.exp(logits[i] - logits[i].max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(scores["average"][i], softmax.mean((0, 1)), rtol=1e-5, atol=1e-7)
  assert ties > 50
  np.testing.assert_allclose(np.sum(scores["vote"], -1), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.sum(scores["average"], -1), 1.0, atol=1e-6)
  # The official acc_D_voted: torch.mode over each image's patch argmaxes (on CPU: the smallest
  # of the tied values), the same decisions as the vote's argmax, ties included.
  per_patch = torch.from_numpy(logits).permute(0, 3, 1, 2).argmax(dim=1).view(n, -1)
  np.testing.assert_array_equal(torch.mode(per_patch)[0].numpy(),
                                np.argmax(scores["vote"], -1))


def test_patch_cross_entropy_against_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=3.0, size=(3, 4, 5, 6)).astype(np.float32)
  labels = np.array([0, 5, 2], np.int32)
  total, count = 0.0, 0
  for i in range(3):
    for y in range(4):
      for x in range(5):
        z = logits[i, y, x].astype(np.float64)
        log_softmax = z - z.max() - np.log(np.exp(z - z.max()).sum())
        total -= log_softmax[labels[i]]
        count += 1
  got = patch_forensics.patch_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, total / count, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The official model: size, layout, initialisation.


def test_official_model_size_and_patch_map():
  method = _method()
  images = jnp.zeros((2, 256, 256, 3))
  variables = jax.eval_shape(lambda: method.init(jax.random.key(0), images))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert count == 196_727  # METHODS.md section 5, 23 classes
  logits = jax.eval_shape(lambda v: method.model.apply(v, images, train=False), variables)
  assert logits.shape == (2, 32, 32, 23) and logits.dtype == jnp.float32
  scores = jax.eval_shape(lambda v: method.predict(v, {"image": images}), variables)
  assert {k: v.shape for k, v in scores.items()} == {"vote": (2, 23), "average": (2, 23)}
  # Every key of the official layout maps onto one of our variables, and back.
  layout = official.read_layout(LAYOUT_FILE)
  table = patch_forensics._official_table(23)
  assert set(table) == {k for k in layout if not k.endswith("num_batches_tracked")}
  assert all(table[k][3] == layout[k] for k in table)
  flat = {"/".join((collection,) + path) for collection, path, _, _ in table.values()}
  assert flat == {"/".join(k) for k in _flat_keys(variables)}


def _flat_keys(tree):
  from flax import traverse_util

  return set(traverse_util.flatten_dict(tree))


def test_init_is_the_originals_xavier_gain_002():
  method = _method()
  images = jnp.zeros((1, 64, 64, 3))
  variables = method.init(jax.random.key(3), images)
  params = variables["params"]
  backbone = params["backbone"]
  # A 1x1 conv 256 -> 256: fans 256 and 256, std = 0.02 * sqrt(2 / 512).
  kernel = np.asarray(backbone["block2"]["sep2"]["pointwise"]["kernel"])
  assert abs(kernel.std() / (0.02 * np.sqrt(2 / 512)) - 1) < 0.03 and abs(kernel.mean()) < 1e-4
  # A depthwise 3x3 over 128 channels: torch's fans 9 and 9 * 128.
  depthwise = np.asarray(backbone["block1"]["sep2"]["depthwise"]["kernel"])
  assert depthwise.shape == (3, 3, 1, 128)
  assert abs(depthwise.std() / (0.02 * np.sqrt(2 / (9 + 9 * 128))) - 1) < 0.1
  scales = np.concatenate([np.asarray(x).ravel() for path, x in
                           _flat_items(params) if path[-1] == "scale"])
  assert abs(scales.mean() - 1) < 2e-3 and abs(scales.std() / 0.02 - 1) < 0.1
  assert all(np.all(np.asarray(x) == 0) for path, x in _flat_items(params) if path[-1] == "bias")
  stats = _flat_items(variables["batch_stats"])
  assert all(np.all(np.asarray(x) == (0 if p[-1] == "mean" else 1)) for p, x in stats)
  # Reproducible from the key; the traced path (eval_shape) gives the same tree.
  again = method.init(jax.random.key(3), images)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables),
                                                   jax.tree.leaves(again)))
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(3), images))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), variables)


def _flat_items(tree):
  from flax import traverse_util

  return list(traverse_util.flatten_dict(tree).items())


def test_backbone_equals_xception_truncated():
  """Our backbone (depthwise convs and max pools written for XLA's CPU backend) holds the same
  variables as iab_jax.models.xception cut after the block and computes the same maps, odd
  sizes included (37 -> 18 -> 16 -> 8 -> 4)."""
  from iab_jax.models import xception

  x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 37, 37, 3)), jnp.float32)
  reference = xception.Model(num_classes=0, truncate_after="block2")
  variables = jax.jit(lambda x: reference.init(jax.random.key(0), x, train=False))(x)
  # Statistics away from (0, 1), so that the normalisation is exercised.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.3 if p[-1].key == "mean" else v * 1.7 if p[-1].key == "var" else v,
      variables)
  expected, _ = jax.jit(lambda v, x: reference.apply(v, x, train=False))(variables, x)
  shifted = xception.Model(num_classes=0, truncate_after="block2", shifted_ops=True)
  got, _ = jax.jit(lambda v, x: shifted.apply(v, x, train=False))(variables, x)
  assert got.shape == expected.shape == (2, 4, 4, 256)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
  # The two CPU-friendly ops alone, against lax's grouped conv and Flax's max pool.
  z = jnp.asarray(np.random.default_rng(6).normal(size=(2, 9, 8, 5)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(7).normal(size=(3, 3, 1, 5)), jnp.float32)
  grouped = jax.lax.conv_general_dilated(z, kernel, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=5)
  np.testing.assert_allclose(xception.depthwise_conv3x3(z, kernel), grouped, atol=1e-5)
  import flax.linen as nn
  for stride in (1, 2):
    np.testing.assert_array_equal(
        xception.max_pool3x3(z, stride),
        nn.max_pool(z, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1))))


# ---------------------------------------------------------------------------------------------
# The official checkpoint.


def _torch_official(num_classes=23):
  """The official attributor's net_D re-stated: DataParallel(CustomXceptionNet cut after block2,
  convout = Conv2d(256, C, 1)), with Cadene's module names (rep indices include the ReLUs)."""
  import torch
  from torch import nn

  class SeparableConv2d(nn.Module):

    def __init__(self, cin, cout):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
      self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
      return self.pointwise(self.conv1(x))

  class Block(nn.Module):

    def __init__(self, cin, cout, start_with_relu):
      super().__init__()
      self.skip = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
      self.skipbn = nn.BatchNorm2d(cout)
      rep = [nn.ReLU(), SeparableConv2d(cin, cout), nn.BatchNorm2d(cout),
             nn.ReLU(), SeparableConv2d(cout, cout), nn.BatchNorm2d(cout)]
      if not start_with_relu:
        rep = rep[1:]
      rep.append(nn.MaxPool2d(3, 2, 1))
      self.rep = nn.Sequential(*rep)

    def forward(self, x):
      return self.rep(x) + self.skipbn(self.skip(x))

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
      self.bn1 = nn.BatchNorm2d(32)
      self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
      self.bn2 = nn.BatchNorm2d(64)
      self.block1 = Block(64, 128, start_with_relu=False)
      self.block2 = Block(128, 256, start_with_relu=True)
      self.convout = nn.Conv2d(256, num_classes, 1)

    def forward(self, x):
      x = torch.relu(self.bn1(self.conv1(x)))
      x = torch.relu(self.bn2(self.conv2(x)))
      return self.convout(self.block2(self.block1(x)))

  class Wrapped(nn.Module):  # torch.nn.DataParallel's `module.` level

    def __init__(self):
      super().__init__()
      self.module = Net()

  class Attributor(nn.Module):

    def __init__(self):
      super().__init__()
      self.net_D = Wrapped()

  torch.manual_seed(0)
  model = Attributor()
  with torch.no_grad():  # random values everywhere, BatchNorm statistics included
    for name, tensor in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var") or (tensor.ndim == 1 and name.endswith("weight")):
        tensor.copy_(torch.rand_like(tensor) + 0.5)  # positive variances and BN scales
      elif tensor.ndim == 4:  # conv weights ~ N(0, 1 / fan_in): activations stay O(1)
        tensor.copy_(torch.randn_like(tensor) / np.sqrt(tensor[0].numel()))
      else:  # BN biases, running means, the convout bias
        tensor.copy_(torch.randn_like(tensor) * 0.5)
  return model.eval()


def test_import_official_gives_the_torch_patch_logits():
  import torch

  net = _torch_official()
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  assert set(state) == set(official.read_layout(LAYOUT_FILE))
  config = patch_config.get_config("standard,official")
  result = patch_forensics.import_official(state, config, "/unused")
  method = patch_forensics.PatchForensics(config, CLASSES23)
  assert method.prediction_rule == "average"
  # The same tree of the same shapes as Method.init makes for this config.
  images = jnp.zeros((1, 64, 64, 3))
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(0), images))
  assert jax.tree.structure(abstract) == jax.tree.structure(result.variables)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(np.shape, result.variables)
  # The full network at a small input (64x64 -> an 8x8 patch map).
  x = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net.net_D.module(torch.from_numpy(x).permute(0, 3, 1, 2))
    expected_avg = torch.softmax(expected, 1).mean((2, 3)).numpy()
    expected = expected.permute(0, 2, 3, 1).numpy()
  logits = jax.jit(lambda v, x: method.model.apply(v, x, train=False))(result.variables, x)
  assert logits.shape == (2, 8, 8, 23)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * scale)
  scores = method.predict(result.variables, {"image": jnp.asarray(x)})
  np.testing.assert_allclose(scores["average"], expected_avg, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(scores["vote"], -1), torch.mode(
      torch.from_numpy(expected.argmax(-1)).view(2, -1))[0].numpy())


@pytest.mark.parametrize("change, message", [
    ("missing", "key 'net_D.module.block2.rep.4.conv1.weight' of the official layout is missing"),
    ("extra", "unexpected key 'net_D.module.block3.skip.weight'"),
    ("unprefixed", "key 'net_D.module.bn1.bias' of the official layout is missing"),
    ("shape", "'net_D.module.convout.weight' has shape"),
])
def test_import_official_rejects_a_bad_layout(change, message):
  state = {k: np.zeros(s, np.float32) for k, s in official.read_layout(LAYOUT_FILE).items()}
  if change == "missing":
    del state["net_D.module.block2.rep.4.conv1.weight"]
  elif change == "extra":
    state["net_D.module.block3.skip.weight"] = np.zeros((728, 256, 1, 1), np.float32)
  elif change == "unprefixed":
    state["bn1.bias"] = state.pop("net_D.module.bn1.bias")
  else:
    state["net_D.module.convout.weight"] = np.zeros((22, 256, 1, 1), np.float32)
  with pytest.raises(ValueError, match=message) as error:
    patch_forensics.import_official(state, patch_config.get_config("standard,official"),
                                    "/unused")
  assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Config and one training step.


def test_config_and_training_steps():
  standard = patch_config.get_config("standard")
  assert standard.num_epochs == 20 and patch_config.get_config("semantic1").num_epochs == 20
  assert standard.input.transform == standard.input.eval_transform == (
      "resize(256)|central_crop(256)|normalize('half')")
  assert standard.optimizer.learning_rate == 1e-3 and standard.input.batch_size == 32
  assert _method().prediction_rule == "vote"
  official_config = patch_config.get_config("standard,official")
  assert official_config.prediction_rule == "average" and official_config.num_epochs == 20
  assert official_config.test_checkpoint == "last"
  for key, value, field in [("prediction_rule", "raw", "config.prediction_rule"),
                            ("model.truncate_after", "block13", "config.model.truncate_after"),
                            ("model.width", 8, "config.model.width")]:
    bad = patch_config.get_config("standard")
    section, _, name = key.rpartition(".")
    (bad[section] if section else bad)[name] = value
    with pytest.raises(ValueError, match=field):
      patch_forensics.PatchForensics.check_config(bad)

  method = _method("standard,runlocal", classes=[f"g{i}" for i in range(3)])
  rng = np.random.default_rng(4)
  batch = {"image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray([0, 1, 2, 1], jnp.int32),
           "levels": jnp.full((4, 4), -1, jnp.int32)}
  variables = method.init(jax.random.key(0), batch["image"])
  phase = method.phases()[0]
  assert phase.num_epochs == 1
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(variables["params"])

  @jax.jit
  def step(variables, opt_state):
    def loss_fn(params):
      return method.loss({**variables, "params": params}, batch, jax.random.key(1), phase)
    (loss, (state, measurements)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"])
    updates, opt_state = optimizer.update(grads, opt_state)
    params = optax.apply_updates(variables["params"], updates)
    return {**variables, **state, "params": params}, opt_state, loss, measurements

  first = None
  for _ in range(8):
    variables, opt_state, loss, measurements = step(variables, opt_state)
    first = float(loss) if first is None else first
  assert float(loss) < first
  assert set(measurements) == {"patch_accuracy", "vote_accuracy", "average_accuracy"}
  # Training updated the running statistics away from torch's fresh (0, 1).
  assert np.abs(np.asarray(variables["batch_stats"]["backbone"]["bn1"]["mean"])).max() > 0
