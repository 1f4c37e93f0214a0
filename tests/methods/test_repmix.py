"""RepMix against NumPy and torch re-statements of the official code: the layer4 mixing, the gating
(the run's real class by default, class 0 with `official`), the beta-weighted losses, training and
inference logits, the parameter counts of METHODS.md section 5, the recipe, and the import of the
official checkpoint layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import repmix as repmix_config
from iab_jax import optimizers
from iab_jax.methods import official, repmix

STAGES = (1, 1, 1, 1)  # a one-block-per-stage ResNet: every kind of block, a fraction of the cost
CLASSES = ("4o", "FLUX", "SD1_5", "real", "SDXL")  # the real class is index 3, not 0
REAL = 3


def make_method(arg="standard", classes=CLASSES, stages=STAGES):
  config = repmix_config.get_config(arg)
  config.model.update({"stage_sizes": stages, "pretrained": ""})
  return repmix.RepMix(config, list(classes))


# ---------------------------------------------------------------------------------------------
# NumPy re-statements of the official formulas.


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_gate(attribution, detection, real_index):
  """The official classifier(): the real column times P(det 0), the others times P(det 1)."""
  p = np_softmax(detection.astype(np.float64))
  out = np.empty_like(attribution, dtype=np.float64)
  for i in range(attribution.shape[0]):
    for c in range(attribution.shape[1]):
      out[i, c] = attribution[i, c] * (p[i, 0] if c == real_index else p[i, 1])
  return out


def np_loss(attribution, detection, labels, beta, gate_index, real_index, num_classes):
  """compute_losses: sum over the mixed labels of beta * CE, the detection CE weighted by its
  target's class weight [1, 1/(C-1)] (torch's reduction='none'), each a mean over the batch."""
  gated = attribution if gate_index is None else np_gate(attribution, detection, gate_index)
  weight = [1.0, 1.0 / (num_classes - 1)]
  attr, det = 0.0, 0.0
  for i in range(labels.shape[0]):
    log_attr = np.log(np_softmax(gated[i]))
    log_det = np.log(np_softmax(detection[i].astype(np.float64)))
    for k in range(labels.shape[1]):
      y_det = int(labels[i, k] != real_index)
      attr += beta[i, k] * -log_attr[labels[i, k]]
      det += beta[i, k] * weight[y_det] * -log_det[y_det]
  return attr / labels.shape[0], det / labels.shape[0]


def test_mixing_is_the_beta_weighted_sum_of_each_image_and_its_partners():
  rng = np.random.default_rng(0)
  n, k = 3, 3
  maps = rng.standard_normal((n * k, 2, 2, 5)).astype(np.float32)
  beta = rng.dirichlet(np.ones(k), n).astype(np.float32)
  expected = np.zeros((n, 2, 2, 5))
  for i in range(n):
    for j in range(k):
      expected[i] += beta[i, j] * maps[i * k + j]
  np.testing.assert_allclose(repmix.mix_representations(jnp.asarray(maps), jnp.asarray(beta)),
                             expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("real_index", [REAL, 0, None])
def test_gate_against_a_loop(real_index):
  rng = np.random.default_rng(1)
  attribution = rng.standard_normal((4, 5)).astype(np.float32)
  detection = rng.standard_normal((4, 2)).astype(np.float32) * 3
  got = repmix.gate(jnp.asarray(attribution), jnp.asarray(detection), real_index)
  expected = attribution if real_index is None else np_gate(attribution, detection, real_index)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_which_class_is_gated_and_whether_detection_trains():
  assert make_method().gate_index == REAL and make_method().train_detection
  # The official code's bug: class 0 is gated as the real one whatever the real class is.
  assert make_method("standard,official").gate_index == 0
  fakes = ("4o", "FLUX", "SD1_5")
  no_real = make_method(classes=fakes)
  assert no_real.real_index is None and no_real.gate_index is None
  assert not no_real.train_detection
  assert make_method("standard,official", classes=fakes).gate_index == 0
  assert repmix.real_class_index(["a", "b", "real"]) == 2


@pytest.mark.parametrize("arg, classes", [
    ("standard", CLASSES), ("standard,official", CLASSES),
    ("standard", ("4o", "FLUX", "SD1_5")), ("standard,official", ("4o", "FLUX", "SD1_5"))])
def test_losses_against_numpy(arg, classes):
  method = make_method(arg, classes)
  c = len(classes)
  rng = np.random.default_rng(2)
  attribution = rng.standard_normal((6, c)).astype(np.float32) * 2
  detection = rng.standard_normal((6, 2)).astype(np.float32) * 2
  labels = rng.integers(0, c, (6, 2)).astype(np.int32)
  labels[0] = [REAL, 1] if REAL < c else labels[0]
  beta = rng.dirichlet(np.ones(2), 6).astype(np.float32)
  attr, det = method.mixed_loss(jnp.asarray(attribution), jnp.asarray(detection),
                                jnp.asarray(labels), jnp.asarray(beta))
  real = method.real_index if method.real_index is not None else -1
  want_attr, want_det = np_loss(attribution, detection, labels, beta, method.gate_index, real, c)
  np.testing.assert_allclose(attr, want_attr, rtol=1e-5)
  if method.train_detection:
    np.testing.assert_allclose(det, want_det, rtol=1e-5)
  else:  # no real class: no detection loss
    assert float(det) == 0.0


def test_mixing_weights_are_uniform_dirichlet():
  from scipy import stats

  beta = np.asarray(make_method().mixing_weights(jax.random.key(0), 4000))
  assert beta.shape == (4000, 2) and np.allclose(beta.sum(1), 1, atol=1e-6)
  assert stats.kstest(beta[:, 0], "uniform").pvalue > 1e-3  # Dirichlet(1, 1): beta_0 ~ U(0, 1)


# ---------------------------------------------------------------------------------------------
# A torch re-statement of the official attributor (attributor_repmix.py).


def official_torch(stages, num_classes, seed=0):
  """RepmixAttributor's modules and names: backbone.model = [stem, layer1-4, mixup,
  (avgpool, flatten, fc 2048 -> 256)], attribution, detection, det_ce; random weights and batch-norm
  statistics away from their (0, 1) start."""
  import torch
  import torchvision

  torch.manual_seed(seed)
  net = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(stages))
  net.fc = torch.nn.Linear(2048, 256)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)

  class Mixup(torch.nn.Module):  # MixupLayer(2, beta): no parameters
    def forward(self, x, ratio):
      cs = x.shape[0] // ratio.shape[1]
      x = x.reshape(cs, ratio.shape[1], *x.shape[1:])
      return (x * ratio[:, :, None, None, None]).sum(1)

  class Backbone(torch.nn.Module):
    def __init__(self):
      super().__init__()
      c = list(net.children())
      self.model = torch.nn.ModuleList(
          [torch.nn.Sequential(*c[:4])] + c[4:8] + [Mixup()]
          + [torch.nn.Sequential(c[8], torch.nn.Flatten(1), c[9])])

    def forward(self, x, ratio=None):
      for i, layer in enumerate(self.model):
        if i == 5:
          if ratio is not None:
            x = layer(x, ratio)
        else:
          x = layer(x)
      return x

  class Attributor(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = Backbone()
      self.attribution = torch.nn.Linear(256, num_classes)
      self.detection = torch.nn.Linear(256, 2)
      self.det_ce = torch.nn.CrossEntropyLoss(torch.tensor([1, 1.0 / (num_classes - 1)]),
                                              reduction="none")

    def forward(self, x, ratio=None, gate_class=0):
      embedding = self.backbone(x, ratio)
      attribution = self.attribution(embedding)
      detection = self.detection(embedding)
      p = torch.softmax(detection, 1)
      is_real = torch.arange(num_classes) == gate_class
      gated = torch.where(is_real, attribution * p[:, :1], attribution * p[:, 1:])
      return gated, detection

  return torch, Attributor()


def torch_state(net):
  return {k: v.numpy().astype(np.float32) for k, v in net.state_dict().items()}


def to_torch(torch, x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("arg", ["standard", "standard,official"])
def test_training_step_equals_the_official_torch_forward_and_loss(arg):
  """Training mode: the image and its partner through the ResNet as one batch (batch norm over
  both), layer4 maps mixed with beta, the gated logits and both losses as the official code computes
  them; the running statistics move as torch's."""
  method = make_method(arg)
  gate_class = method.gate_index
  torch, net = official_torch(STAGES, len(CLASSES), seed=1)
  state = torch_state(net)
  layout = {k: tuple(v.shape) for k, v in state.items()}
  variables = repmix.import_official(state, None, "", layout=layout).variables
  rng = np.random.default_rng(3)
  n = 3
  images = rng.standard_normal((n, 40, 40, 3)).astype(np.float32)
  partners = rng.standard_normal((n, 1, 40, 40, 3)).astype(np.float32)
  labels, partner_labels = np.array([REAL, 0, 4], np.int32), np.array([[1], [REAL], [4]], np.int32)
  batch = {"image": images, "partner_image": partners, "label": labels,
           "partner_label": partner_labels}
  key = jax.random.key(7)
  loss, (new_state, measured) = jax.jit(lambda v, b, r: method.loss(v, b, r, None))(
      variables, batch, key)
  beta = np.array(method.mixing_weights(key, n))

  net.train()
  interleaved = np.stack([images, partners[:, 0]], 1).reshape((2 * n,) + images.shape[1:]).copy()
  with torch.no_grad():
    gated, detection = net(to_torch(torch, interleaved), torch.from_numpy(beta), gate_class)
    y_gan = torch.from_numpy(np.stack([labels, partner_labels[:, 0]], 1).astype(np.int64))
    y_det = (y_gan != REAL).long()  # the official dataset's y_det = (label != real)
    b = torch.from_numpy(beta)
    attr_loss = torch.mean(sum(torch.nn.functional.cross_entropy(gated, y_gan[:, i],
                                                                 reduction="none") * b[:, i]
                               for i in range(2)))
    det_loss = torch.mean(sum(net.det_ce(detection, y_det[:, i]) * b[:, i] for i in range(2)))
  np.testing.assert_allclose(measured["attribution_loss"], attr_loss.item(), rtol=1e-4)
  np.testing.assert_allclose(measured["detection_loss"], det_loss.item(), rtol=1e-4)
  np.testing.assert_allclose(loss, attr_loss.item() + det_loss.item(), rtol=1e-4)
  (ours_attr, ours_aux), _ = jax.jit(lambda v: method.model.apply(
      v, images, train=True, partners=partners, beta=jnp.asarray(beta),
      mutable=["batch_stats"]))(variables)
  gated_ours = repmix.gate(ours_attr, ours_aux["detection"], gate_class)
  np.testing.assert_allclose(gated_ours, gated.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(new_state["batch_stats"]["backbone"]["layer4_0"]["bn3"]["var"],
                             net.backbone.model[4][0].bn3.running_var.numpy(), rtol=1e-4)


def test_parameter_counts_equal_the_official_model():
  method = make_method(stages=(3, 4, 6, 3), classes=[f"c{i}" for i in range(22)] + ["real"])
  shapes = jax.eval_shape(lambda: method.model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                    train=False))
  count = lambda tree: sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))
  params = shapes["params"]
  # METHODS.md section 5: backbone ResnetMixup 24,032,576 (ResNet-50 + fc 2048 -> 256),
  # attribution 5,911, detection 514, total 24,039,001.
  assert count(params["backbone"]) + count(params["embedding"]) == 24_032_576
  assert count(params["attribution"]) == 5_911 and count(params["detection"]) == 514
  assert count(params) == 24_039_001


def test_recipe_default_and_official():
  config = repmix_config.get_config("standard")
  assert config.num_epochs == 10 and repmix_config.get_config("semantic1").num_epochs == 15
  assert config.input.batch_size == 32 and config.model.pretrained == "resnet50.tv_in1k"
  assert config.model.embed_dim == 256 and config.mixup.samples == 2 and config.mixup.alpha == 1
  assert config.gate == "real"
  assert config.input.transform == "resize(256)|flip_lr|random_crop(224)|normalize('half')"
  assert config.input.eval_transform == "resize(256)|central_crop(256)|normalize('half')"
  # The original: Adam 1e-4 with torch's L2 weight decay 5e-4, StepLR(1 epoch, 0.8).
  schedule = optimizers.learning_rate_schedule(config.optimizer, 100, 1000)
  np.testing.assert_allclose([schedule(s) for s in (0, 99, 100, 250)],
                             [1e-4, 1e-4, 8e-5, 6.4e-5], rtol=1e-6)
  assert config.optimizer.weight_decay == 5e-4 and config.optimizer.name == "adam"
  off = repmix_config.get_config("standard,official")
  assert off.gate == "class0" and off.input.eval_transform == off.input.transform
  assert dict(off.optimizer) == {"name": "adam", "learning_rate": 1e-4}
  assert repmix_config.get_config("semantic1,official").num_epochs == 10
  repmix.RepMix.check_config(config)
  for key, value, message in [("gate", "first", r"config\.gate"),
                              ("mixup.alpha", 0.0, r"config\.mixup\.alpha"),
                              ("model.depth", 3, r"config\.model\.depth")]:
    bad = repmix_config.get_config("standard")
    section, _, name = key.rpartition(".")
    (bad[section] if section else bad)[name] = value
    with pytest.raises(ValueError, match=message):
      repmix.RepMix.check_config(bad)
  phase, = make_method().phases()
  assert phase.partners == 1 and phase.num_epochs == 10
  mini = repmix_config.get_config("standard,minibench")
  assert mini.model.stage_sizes == (1, 1, 1, 1) and mini.model.pretrained == ""
  assert mini.random_init_fallback and mini.input.batch_size == 8
  assert "flip_lr" in mini.input.transform and "flip_lr" not in mini.input.eval_transform


def test_loads_imagenet_weights_into_the_backbone_only(tmp_path):
  import torch
  import torchvision
  from safetensors.numpy import save_file

  torch.manual_seed(0)
  net = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(STAGES))
  state = torch_state(net)
  path = tmp_path / "model.safetensors"
  save_file(state, str(path))
  config = repmix_config.get_config("standard")
  config.model.update({"stage_sizes": STAGES, "pretrained": str(path)})
  method = repmix.RepMix(config, list(CLASSES))
  images = jnp.zeros((1, 32, 32, 3))
  rng = jax.random.key(0, impl="rbg")
  loaded, fresh = method.init(rng, images), method.init(rng, images, pretrained=False)
  np.testing.assert_array_equal(loaded["params"]["backbone"]["layer3_0"]["conv2"]["kernel"],
                                state["layer3.0.conv2.weight"].transpose(2, 3, 1, 0))
  assert "fc" not in loaded["params"]["backbone"]
  for name in ("embedding", "attribution", "detection"):
    np.testing.assert_array_equal(loaded["params"][name]["kernel"], fresh["params"][name]["kernel"])


# ---------------------------------------------------------------------------------------------
# The official checkpoint.


@pytest.fixture(scope="module")
def official_repmix():
  torch, net = official_torch((3, 4, 6, 3), 23, seed=2)
  return torch, net.eval(), torch_state(net)


def test_import_official_logits_equal_torch(official_repmix, tmp_path):
  torch, net, state = official_repmix
  layout = official.read_layout(repmix.OFFICIAL_LAYOUT)
  assert {k: tuple(v.shape) for k, v in state.items()} == layout
  np.testing.assert_allclose(state["det_ce.weight"], [1, 1 / 22], rtol=1e-6)
  config = repmix_config.get_config("standard,official")
  result = repmix.import_official(state, config, str(tmp_path))
  assert len(result.notes) == 1
  classes = [f"c{i}" for i in range(22)] + ["real"]
  method = repmix.RepMix(config, classes)
  x = np.random.default_rng(4).standard_normal((2, 64, 64, 3)).astype(np.float32)
  expected = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.asarray(x),
                                                pretrained=False))
  assert jax.tree.map(jnp.shape, result.variables) == jax.tree.map(lambda s: s.shape, expected)
  probs, (attribution, aux) = jax.jit(lambda v, x: (
      method.predict(v, {"image": x}), method.model.apply(v, x, train=False)))(
          result.variables, x)
  with torch.no_grad():
    gated, detection = net(to_torch(torch, x), None, gate_class=0)
  gated = gated.numpy()
  assert np.abs(np.asarray(repmix.gate(attribution, aux["detection"], 0)) - gated).max() <= \
      1e-4 * np.abs(gated).max()
  np.testing.assert_allclose(aux["detection"], detection.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(probs, np_softmax(gated.astype(np.float64)), atol=1e-5)
  # The default gate (the real class, 22) gives other probabilities on the same weights.
  default = repmix.RepMix(repmix_config.get_config("standard"), classes)
  assert not np.allclose(default.predict(result.variables, {"image": x}), probs, atol=1e-4)


def test_import_official_notes_other_detection_weights(official_repmix):
  state = dict(official_repmix[2])
  state["det_ce.weight"] = np.array([1.0, 0.5], np.float32)
  result = repmix.import_official(state, None, "")
  assert any("det_ce.weight is [1.0, 0.5]" in note for note in result.notes)


@pytest.mark.parametrize("change, message", [
    ("missing", r"key 'backbone\.model\.3\.2\.conv2\.weight' of the official layout is missing"),
    ("extra", r"unexpected key 'backbone\.model\.5\.weight'"),
    ("shape", r"key 'attribution\.weight' has shape \(10, 256\), the official layout has "
              r"\(23, 256\)"),
])
def test_import_official_rejects_other_layouts(official_repmix, change, message):
  state = dict(official_repmix[2])
  if change == "missing":
    del state["backbone.model.3.2.conv2.weight"]
  elif change == "extra":
    state["backbone.model.5.weight"] = np.zeros((2,), np.float32)
  else:
    state["attribution.weight"] = np.zeros((10, 256), np.float32)
  with pytest.raises(ValueError, match=message) as e:
    repmix.import_official(state, None, "")
  assert "\n" not in str(e.value)
