"""DCT-CNN: the dct transform op, the streamed DCT statistics, the official model's size, and the
import of the official checkpoint, each against an independent reference (a brute-force DCT
matrix and scipy, numpy over the stacked data, METHODS.md section 5, a torch SimpleCNN)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from configs import dct_cnn as dct_config
from iab_jax.data import transforms
from iab_jax.methods import dct_cnn
from iab_jax.models import dct_cnn as dct_model

CLASSES = [f"g{i}" for i in range(5)]
LAYOUT_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "data_prep", "official_layouts",
                           dct_cnn.OFFICIAL_LAYOUT)


def _dct_matrix(n):
  """The orthonormal DCT-II as an n x n matrix, from its definition."""
  k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m


def test_dct_op_against_definition_and_scipy():
  image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
  magnitude = transforms.parse("dct(log=False)")(image)
  log_magnitude = transforms.parse("dct")(image)
  assert magnitude.dtype == log_magnitude.dtype == np.float32
  assert magnitude.shape == image.shape
  pixels = image.astype(np.float64)
  # Per channel: C_h X C_w^T, from the definition; and scipy's n-d DCT over height and width.
  by_definition = np.stack([_dct_matrix(12) @ pixels[..., c] @ _dct_matrix(10).T
                            for c in range(3)], axis=-1)
  by_scipy = scipy.fft.dctn(pixels, type=2, norm="ortho", axes=(0, 1))
  np.testing.assert_allclose(by_definition, by_scipy, atol=1e-9)
  np.testing.assert_allclose(magnitude, np.abs(by_scipy), rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(log_magnitude, np.log(np.abs(by_scipy) + 1e-12), rtol=1e-4,
                             atol=1e-3)
  # The DC coefficient of a channel is its sum / sqrt(h * w): no /255 scaling.
  np.testing.assert_allclose(magnitude[0, 0], pixels.sum(axis=(0, 1)) / np.sqrt(120), rtol=1e-5)
  spec = transforms.parse("resize(16)|central_crop(16)|dct(log=True)")
  assert spec.spec == "resize(16)|central_crop(16)|dct" and spec.is_float
  assert spec.output_size == (16, 16)
  with pytest.raises(ValueError, match="dct log"):
    transforms.parse("dct(log='yes')")
  with pytest.raises(ValueError, match="takes an image, but .dct. before it returns an array"):
    transforms.parse("dct|flip_lr")


def _method(arg="standard,runlocal", classes=CLASSES):
  config = dct_config.get_config(arg)
  dct_cnn.DctCnn.check_config(config)
  return dct_cnn.DctCnn(config, classes)


def test_streamed_statistics_match_numpy_over_uneven_batches():
  rng = np.random.default_rng(1)
  # Log-DCT-like: large means, small spreads, where a naive sum of squares would cancel.
  data = (rng.normal(size=(31, 4, 4, 3)) * rng.uniform(0.01, 2.0, size=(4, 4, 3))
          + rng.uniform(-1e4, 1e4, size=(4, 4, 3))).astype(np.float32)
  data[:, 0, 0, 0] = 7.0  # a constant coefficient: std 0 is kept finite (1)
  sizes = [7, 1, 13, 4, 6]
  batches, start = [], 0
  for n in sizes:
    batches.append({"image": data[start:start + n]})
    start += n
  # A padded last batch: the padding repeats a real example and must not count.
  batches[-1] = {"image": np.concatenate([data[start - 6:start], data[:3]]),
                 "mask": np.array([True] * 6 + [False] * 3)}
  method = _method()
  assert method.needs_prepare
  identity = {"mean": np.zeros((4, 4, 3), np.float32), "std": np.ones((4, 4, 3), np.float32)}
  prepared = method.prepare({"params": {}, dct_model.STATS: identity}, iter(batches))
  stats = prepared[dct_model.STATS]
  stacked = data.astype(np.float64)
  expected_std = stacked.std(axis=0)
  expected_std[0, 0, 0] = 1.0
  np.testing.assert_allclose(stats["mean"], stacked.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(stats["std"], expected_std, rtol=1e-5)
  assert stats["mean"].dtype == jnp.float32 and prepared["params"] == {}
  with pytest.raises(ValueError, match="no examples"):
    method.prepare(prepared, iter([]))


def test_official_model_size_and_layout():
  model = dct_model.Model(num_classes=23)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, 256, 256, 3)), train=False))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert count == 3_020_795  # METHODS.md section 5
  assert variables["params"]["fc"]["kernel"].shape == (32 * 64 * 64, 23)
  assert variables[dct_model.STATS]["mean"].shape == (256, 256, 3)
  with open(LAYOUT_FILE) as f:
    lines = [line.split(":") for line in f.read().splitlines() if line.strip()]
  layout = {key.strip(): tuple(int(v) for v in value.strip(" []").split(","))
            for key, value in lines}
  assert layout == dct_cnn.official_layout()


def _torch_official():
  """The official DCTAttributor's modules, re-stated: feature_extractor = SimpleCNN(3, 23, 256)."""
  import torch
  from torch import nn

  class SimpleCNN(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
      self.conv2 = nn.Conv2d(3, 8, 3, padding=1)
      self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
      self.conv4 = nn.Conv2d(16, 32, 3, padding=1)
      self.fc = nn.Linear(32 * 64 * 64, 23)

    def forward(self, x):
      x = torch.relu(self.conv1(x))
      x = nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
      x = nn.functional.avg_pool2d(torch.relu(self.conv3(x)), 2)
      x = torch.relu(self.conv4(x))
      return self.fc(torch.flatten(x, 1))

  class Attributor(nn.Module):

    def __init__(self):
      super().__init__()
      self.feature_extractor = SimpleCNN()

  torch.manual_seed(0)
  return Attributor().eval()


def test_import_official_gives_the_torch_logits():
  import torch

  net = _torch_official()
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  config = dct_config.get_config("standard,official")
  result = dct_cnn.import_official(state, config, "/unused")
  method = dct_cnn.DctCnn(config, [f"c{i}" for i in range(23)])
  assert not method.needs_prepare
  # The same tree of the same shapes as Method.init makes for this config.
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))
  assert jax.tree.structure(abstract) == jax.tree.structure(result.variables)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(np.shape, result.variables)
  # An image as the official loader gives it: |DCT| of a 256x256 crop.
  image = np.random.default_rng(2).integers(0, 256, (300, 280, 3), dtype=np.uint8)
  x = transforms.parse(config.input.eval_transform)(image)[None]
  with torch.no_grad():
    expected = net.feature_extractor(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  logits = method.model.apply(result.variables, jnp.asarray(x), train=False)[0]
  scale = np.abs(expected).max()
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * scale)
  # The fc rows' permutation matters: read in torch's (channel, height, width) order unchanged,
  # the same weights give other logits.
  unpermuted = jax.tree.map(np.asarray, result.variables)
  unpermuted["params"]["fc"]["kernel"] = state["feature_extractor.fc.weight"].T
  wrong = method.model.apply(unpermuted, jnp.asarray(x), train=False)[0]
  assert np.abs(wrong - expected).max() > 0.1 * scale
  # Imported into the standardised recipe, identity statistics keep the function.
  standard = dct_cnn.import_official(state, dct_config.get_config("standard"), "/unused")
  assert standard.variables[dct_model.STATS]["std"].shape == (256, 256, 3)


@pytest.mark.parametrize("change, message", [
    ("missing", "key 'feature_extractor.conv3.bias' of the official layout is missing"),
    ("extra", "unexpected key 'feature_extractor.conv5.weight'"),
    ("shape", "'feature_extractor.fc.weight' has shape"),
])
def test_import_official_rejects_a_bad_layout(change, message):
  state = {k: np.zeros(s, np.float32) for k, s in dct_cnn.official_layout().items()
           if not k.endswith("fc.weight")}
  state["feature_extractor.fc.weight"] = np.zeros((23, 131072), np.float32)
  if change == "missing":
    del state["feature_extractor.conv3.bias"]
  elif change == "extra":
    state["feature_extractor.conv5.weight"] = np.zeros((1,), np.float32)
  else:
    state["feature_extractor.fc.weight"] = np.zeros((22, 131072), np.float32)
  with pytest.raises(ValueError, match=message) as error:
    dct_cnn.import_official(state, dct_config.get_config("standard,official"), "/unused")
  assert "\n" not in str(error.value)


def test_config_and_training_step():
  official = dct_config.get_config("standard,official")
  assert official.input.transform.endswith("dct(log=False)")
  assert not official.model.standardize and official.test_checkpoint == "last"
  standard = dct_config.get_config("semantic1")
  assert standard.input.transform == "resize(256)|central_crop(256)|dct(log=True)"
  assert standard.model.standardize and standard.num_epochs == 15
  assert dct_config.get_config("standard").num_epochs == 10
  bad = dct_config.get_config("standard")
  bad.input.transform = "resize(256)|central_crop(256)|normalize('unit')"
  with pytest.raises(ValueError, match="config.input.transform"):
    dct_cnn.DctCnn.check_config(bad)
  method = _method()
  images = np.random.default_rng(3).normal(5.0, 3.0, size=(4, 8, 8, 3)).astype(np.float32)
  variables = method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert set(variables) == {"params", dct_model.STATS}
  np.testing.assert_array_equal(variables[dct_model.STATS]["std"], 1.0)
  np.testing.assert_array_equal(variables[dct_model.STATS]["mean"], 0.0)
  # Drawn on the host, the same tree as the traced path (jax.eval_shape for a checkpoint's
  # structure), reproducible from the key, within torch's +-1/sqrt(fan_in).
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), variables)
  again = method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables),
                                                  jax.tree.leaves(again)))
  for name, fan_in in [("conv1", 27), ("conv4", 144), ("fc", 32 * 2 * 2)]:
    kernel, bias = variables["params"][name]["kernel"], variables["params"][name]["bias"]
    assert 0.8 / np.sqrt(fan_in) < np.abs(kernel).max() <= 1 / np.sqrt(fan_in)
    assert np.abs(bias).max() <= 1 / np.sqrt(fan_in)
  variables = method.prepare(variables, iter([{"image": images}]))
  batch = {"image": jnp.asarray(images), "label": jnp.array([0, 1, 2, 4])}

  @jax.jit
  def step(variables, batch):
    def loss_fn(params):
      return method.loss({**variables, "params": params}, batch, jax.random.key(1), None)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, aux, grads, method.predict(variables, batch)

  loss, (state, measured), grads, probs = step(variables, batch)
  assert state == {} and np.isfinite(loss) and 0 <= measured["accuracy"] <= 1
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert set(grads) == {"conv1", "conv2", "conv3", "conv4", "fc"}
  # The statistics standardise the input inside the model: the same network without them,
  # given the standardised batch, gives the same probabilities.
  stats = variables[dct_model.STATS]
  plain = dct_model.Model(num_classes=5, standardize=False)
  expected = jax.jit(plain.apply, static_argnames="train")(
      {"params": variables["params"]}, (images - stats["mean"]) / stats["std"], train=False)[0]
  np.testing.assert_allclose(probs, jax.nn.softmax(expected, -1), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
