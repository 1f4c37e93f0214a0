"""PatchCraft: the published filters, the binarised high-pass front end and the whole network
against a PyTorch re-statement of the official attributor, the official parameter counts, the
checkpoint import, and the method's loss and predict."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import patchcraft as patchcraft_config
from iab_jax.methods import official
from iab_jax.methods import patchcraft as method
from iab_jax.models import patchcraft as model_lib

# The 30 filters as published (PatchCraft's SRM-style high-pass bank; the official
# backbones/patchcraft/filter.py FilterLayer), group by group.
_ = [0, 0, 0, 0, 0]
PUBLISHED = {
    "a": [
        [_, [0, 1, 0, 0, 0], [0, 0, -1, 0, 0], _, _],
        [_, [0, 0, 1, 0, 0], [0, 0, -1, 0, 0], _, _],
        [_, [0, 0, 0, 1, 0], [0, 0, -1, 0, 0], _, _],
        [_, _, [0, 0, -1, 1, 0], _, _],
        [_, _, [0, 0, -1, 0, 0], [0, 0, 0, 1, 0], _],
        [_, _, [0, 0, -1, 0, 0], [0, 0, 1, 0, 0], _],
        [_, _, [0, 0, -1, 0, 0], [0, 1, 0, 0, 0], _],
        [_, _, [0, 1, -1, 0, 0], _, _],
    ],
    "b": [
        [_, [0, 2, 1, 0, 0], [0, 1, -3, 0, 0], [0, 0, 0, 1, 0], _],
        [[0, 0, -1, 0, 0], [0, 0, 3, 0, 0], [0, 0, -3, 0, 0], [0, 0, 1, 0, 0], _],
        [_, [0, 0, 1, 2, 0], [0, 0, -3, 1, 0], [0, 1, 0, 0, 0], _],
        [_, _, [0, 1, -3, 3, -1], _, _],
        [_, [0, 1, 0, 0, 0], [0, 0, -3, 1, 0], [0, 0, 1, 2, 0], _],
        [_, [0, 0, 1, 0, 0], [0, 0, -3, 0, 0], [0, 0, 3, 0, 0], [0, 0, -1, 0, 0]],
        [_, [0, 0, 0, 1, 0], [0, 1, -3, 0, 0], [0, 2, 1, 0, 0], _],
        [_, _, [-1, 3, -3, 1, 0], _, _],
    ],
    "c": [
        [_, [0, 0, 1, 0, 0], [0, 0, -2, 0, 0], [0, 0, 1, 0, 0], _],
        [_, _, [0, 1, -2, 1, 0], _, _],
        [_, [0, 1, 0, 0, 0], [0, 0, -2, 0, 0], [0, 0, 0, 1, 0], _],
        [_, [0, 0, 0, 1, 0], [0, 0, -2, 0, 0], [0, 1, 0, 0, 0], _],
    ],
    "d": [
        [_, [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], _, _],
        [_, [0, -1, 2, 0, 0], [0, 2, -4, 0, 0], [0, -1, 2, 0, 0], _],
        [_, _, [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], _],
        [_, [0, 0, 2, -1, 0], [0, 0, -4, 2, 0], [0, 0, 2, -1, 0], _],
    ],
    "e": [
        [[1, 2, -2, 2, 1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], _, _],
        [[1, 2, -2, 0, 0], [2, -6, 8, 0, 0], [-2, 8, -12, 0, 0], [2, -6, 8, 0, 0],
         [1, 2, -2, 0, 0]],
        [_, _, [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [1, 2, -2, 2, 1]],
        [[0, 0, -2, 2, 1], [0, 0, 8, -6, 2], [0, 0, -12, 8, -2], [0, 0, 8, -6, 2],
         [0, 0, -2, 2, 1]],
    ],
    "f": [[_, [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], _]],
    "g": [[[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
           [-1, 2, -2, 2, -1]]],
}
OFFICIAL_CLASSES = 23


def test_filters_equal_the_published_ones():
  assert [len(PUBLISHED[g]) for g in "abcdefg"] == [8, 8, 4, 4, 4, 1, 1]
  weights = model_lib.official_filter_weights()
  assert sorted(weights) == [f"filter.filter_{g}.weight" for g in "abcdefg"]
  for g, kernels in PUBLISHED.items():
    expected = np.repeat(np.asarray(kernels, np.float32)[:, None], 3, axis=1)
    np.testing.assert_array_equal(weights[f"filter.filter_{g}.weight"], expected)
  # High-pass: every filter removes a flat image, except the four diagonal third-order ones of
  # group b and the four half-KV ones of group e, whose published values sum to 2 and 4 (their
  # corner signs differ from Fridrich's SRM; every PatchCraft implementation has them so).
  sums = {g: np.asarray(k).sum(axis=(1, 2)).tolist() for g, k in PUBLISHED.items()}
  assert sums.pop("b") == [2, 0, 2, 0, 2, 0, 2, 0] and sums.pop("e") == [4, 4, 4, 4]
  assert all(s == 0 for group in sums.values() for s in group)
  assert model_lib.filter_bank_size() == 2250


# ---------------------------------------------------------------------------------------------
# A PyTorch re-statement of the official attributor (attributor_patchcraft.py, filter.py).


def torch_official(num_classes=OFFICIAL_CLASSES, seed=0):
  import torch
  from torch import nn

  class FilterLayer(nn.Module):
    def __init__(self):
      super().__init__()
      for g, kernels in PUBLISHED.items():
        conv = nn.Conv2d(3, len(kernels), 5, padding=2, bias=False)
        conv.weight.data = torch.tensor(kernels, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
        setattr(self, f"filter_{g}", conv)

    def forward(self, x):
      groups = [getattr(self, f"filter_{g}")(x).mean(dim=1) for g in "abcdefg"]
      gray = sum(groups) / 7.0
      threshold = torch.median(gray.view(gray.size(0), -1), dim=1).values + 2 / 255.0
      return (gray > threshold[:, None, None]).float()

  class Official(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv_layer = nn.Conv2d(1, 32, 3, padding=1)
      self.batch_norm = nn.BatchNorm2d(32)
      self.filter = FilterLayer()
      layers = []
      for stage, convs in enumerate((4, 2, 2, 2)):
        if stage:
          layers.append(nn.AvgPool2d(2, 2))
        for _ in range(convs):
          layers += [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
      layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(32, num_classes)]
      self.nn_classifier = nn.Module()
      self.nn_classifier.model = nn.Sequential(*layers)

    def forward(self, rich, poor):
      def response(image):
        return nn.functional.hardtanh(self.batch_norm(self.conv_layer(
            self.filter(image).unsqueeze(1))))
      return self.nn_classifier.model(response(rich) - response(poor))

  torch.manual_seed(seed)
  net = Official()
  with torch.no_grad():  # trained-looking BatchNorms
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.3, 0.3)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net


def state_numpy(net):
  return {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}


def official_config():
  return patchcraft_config.get_config("standard,official")


def random_pair(n=2, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32) for k in ("rich", "poor")}


@functools.lru_cache(maxsize=None)
def imported():
  net = torch_official()
  state = state_numpy(net)
  return net, state, method.import_official(state, official_config(), "/nonexistent")


def test_layout_of_the_restatement_is_the_official_one():
  _, state, _ = imported()
  layout = official.read_layout(method.OFFICIAL_LAYOUT)
  assert {k: tuple(v.shape) for k, v in state.items()} == layout


def test_binary_front_end_equals_torch():
  import torch

  net, _, _ = imported()
  x = random_pair(3, 24, seed=1)["rich"]
  with torch.no_grad():
    expected = net.filter(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = np.asarray(model_lib.high_pass_binary(jnp.asarray(x)))[..., 0]
  np.testing.assert_array_equal(ours, expected)
  assert 0.1 < ours.mean() < 0.6  # binarised around a little above the median


def test_imported_logits_equal_torch_eval_and_train():
  import torch

  net, state, result = imported()
  variables = result.variables
  model = model_lib.Model(num_classes=OFFICIAL_CLASSES)
  pair = random_pair(4, 32, seed=2)
  torch_in = {k: torch.from_numpy(v.transpose(0, 3, 1, 2)) for k, v in pair.items()}
  net.eval()
  with torch.no_grad():
    expected = net(torch_in["rich"], torch_in["poor"]).numpy()
  logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, pair)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
  assert aux["features"].shape == (4, 32) and aux["fingerprint"].shape == (4, 32, 32, 32)

  # Training: batch statistics, the shared BatchNorm called once per texture image.
  net.train()
  with torch.no_grad():
    expected_train = net(torch_in["rich"], torch_in["poor"]).numpy()
  (logits, _), state_out = model.apply(variables, pair, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(logits), expected_train, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(state_out["batch_stats"]["batch_norm"]["mean"]),
                             net.batch_norm.running_mean.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(state_out["batch_stats"]["batch_norm"]["var"]),
                             net.batch_norm.running_var.numpy(), rtol=1e-4, atol=1e-5)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})  # undo the updates
  net.eval()


def test_parameter_counts_equal_the_official_model():
  model = model_lib.Model(num_classes=OFFICIAL_CLASSES)
  x = jnp.zeros((1, 256, 256, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), {"rich": x, "poor": x},
                                                train=False))
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  trainable = count(variables["params"])
  assert trainable == 94_263
  assert trainable + model_lib.filter_bank_size() == 96_513
  assert count(variables["params"]["conv_layer"]) == 320
  assert count(variables["params"]["batch_norm"]) == 64


def test_import_gives_the_variables_init_makes():
  _, _, result = imported()
  config = official_config()
  m = method.PatchCraft(config, [str(i) for i in range(OFFICIAL_CLASSES)])
  x = jnp.zeros((1, 256, 256, 3))
  init = jax.eval_shape(lambda: m.init(jax.random.key(0), {"rich": x, "poor": x}, False))
  shapes = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)
  assert shapes(init) == shapes(result.variables)


def test_import_rejects_missing_extra_misshaped_and_foreign_filters():
  _, state, _ = imported()
  config = official_config()

  def fails(bad, match):
    with pytest.raises(ValueError, match=match) as info:
      method.import_official(bad, config, "/nonexistent")
    assert "\n" not in str(info.value)

  fails({k: v for k, v in state.items() if k != "nn_classifier.model.30.weight"},
        "nn_classifier.model.30.weight")
  fails({**state, "nn_classifier.model.36.weight": np.zeros((23, 32), np.float32)},
        "nn_classifier.model.36.weight")
  fails({**state, "conv_layer.weight": np.zeros((16, 1, 3, 3), np.float32)}, "conv_layer.weight")
  fails({**state, "filter.filter_c.weight": state["filter.filter_c.weight"] * 2},
        "filter.filter_c.weight")


# ---------------------------------------------------------------------------------------------
# The method.


def test_method_loss_and_predict():
  config = patchcraft_config.get_config("standard,runlocal")
  classes = [f"c{i}" for i in range(5)]
  m = method.PatchCraft(config, classes)
  pair = {k: jnp.asarray(v) for k, v in random_pair(4, 32, seed=3).items()}
  variables = m.init(jax.random.key(0), pair)
  batch = {"image": pair, "label": jnp.array([0, 1, 2, 3], jnp.int32)}
  loss_fn = jax.jit(lambda v, b: m.loss(v, b, jax.random.key(1), None))
  loss, (state, measurements) = loss_fn(variables, batch)
  assert np.isfinite(float(loss)) and set(state) == {"batch_stats"}
  assert 0.0 <= float(measurements["accuracy"]) <= 1.0
  grads = jax.jit(jax.grad(lambda p: m.loss({**variables, "params": p}, batch, None, None)[0]))(
      variables["params"])
  assert float(jnp.abs(grads["conv_layer"]["kernel"]).sum()) > 0
  probs = jax.jit(m.predict)(variables, batch)
  assert probs.shape == (4, 5)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="rich"):
    m.predict(variables, {"image": pair["rich"]})


def test_config_recipes():
  standard = patchcraft_config.get_config("standard")
  assert standard.num_epochs == 10 and patchcraft_config.get_config("semantic1").num_epochs == 15
  assert standard.input.transform.startswith("patchcraft_augment")
  assert "patchcraft_augment" not in standard.input.eval_transform
  official_cfg = official_config()
  assert official_cfg.num_epochs == 15
  assert official_cfg.input.eval_transform.startswith("patchcraft_augment")
  assert standard.optimizer.learning_rate == 1e-3 and standard.optimizer.decay_factor == 0.9
  minibench = patchcraft_config.get_config("standard,minibench")
  assert "texture_tiles('rich', 8, 4)" in minibench.input.eval_transform
  method.PatchCraft.check_config(standard)
  bad = ml_collections.ConfigDict(standard.to_dict())
  bad.model.depth = 3
  with pytest.raises(ValueError, match="config.model.depth"):
    method.PatchCraft.check_config(bad)
