"""DNA-Det: the supervised contrastive and weighted losses against NumPy loops, the official
model's parameter counts (METHODS.md section 5), the two-phase loss and prediction, and the
import of the official checkpoint against a torch re-statement of the official attributor."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dna_det as dna_config
from iab_jax.methods import base, dna_det, official
from iab_jax.models import dna_det as dna_model

CLASSES = [f"g{i}" for i in range(4)]
LAYOUT = official.read_layout(dna_det.OFFICIAL_LAYOUT)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _supcon_by_loops(features, labels, temperature, base_temperature):
  """Khosla et al.'s L^sup_out, one anchor at a time over all N V views."""
  n, v, _ = features.shape
  items = [(features[i, a], labels[i], (i, a)) for i in range(n) for a in range(v)]
  losses = []
  for z, y, me in items:
    others = [(w, t) for w, t, who in items if who != me]
    denominator = sum(np.exp(np.dot(z, w) / temperature) for w, _ in others)
    positives = [w for w, t in others if t == y]
    losses.append(-np.mean([np.log(np.exp(np.dot(z, p) / temperature) / denominator)
                            for p in positives]))
  return temperature / base_temperature * np.mean(losses)


def test_supcon_loss_against_a_loop_over_anchors():
  rng = np.random.default_rng(0)
  features = _normalised(rng, (6, 3, 8)).astype(np.float64)
  labels = np.array([0, 1, 0, 2, 1, 0])
  for temperature, base_temperature in ((0.07, 0.07), (0.5, 0.07), (1.0, 1.0)):
    ours = dna_det.supcon_loss(jnp.asarray(features, jnp.float32), jnp.asarray(labels),
                               temperature, base_temperature)
    expected = _supcon_by_loops(features, labels, temperature, base_temperature)
    np.testing.assert_allclose(float(ours), expected, rtol=2e-5)
  # Views of one image only (every label distinct): SimCLR's loss, still finite.
  assert np.isfinite(float(dna_det.supcon_loss(jnp.asarray(features, jnp.float32),
                                               jnp.arange(6))))


def test_weighted_loss():
  p = jnp.array([0.5, 2.0])
  expected = 0.5 / 0.25 * 3.0 + np.log(1.25) + 0.5 / 4.0 * 7.0 + np.log(5.0)
  np.testing.assert_allclose(float(dna_det.weighted_loss(p, (3.0, 7.0))), expected, rtol=1e-6)


def test_official_parameter_counts():
  model = dna_model.Model(num_classes=23)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                train=False))
  params = variables["params"]
  backbone = {k: v for k, v in params.items() if k.startswith("conv") or k == dna_model.HEAD}
  # METHODS.md section 5: Simple_CNN 5,906,583; SupCon head 328,320; awl 2; total 6,234,905.
  assert _count(backbone) == 5_906_583
  assert _count(params["supcon"]) == 328_320
  assert _count(params["awl"]) == 2
  assert _count(params) == 6_234_905
  assert _count(variables["batch_stats"]) == 2 * (64 + 64 + 128 + 128 + 256 + 256 + 512 + 512)
  # The pre-training heads: a 170-way linear layer, a second projection head, two weights.
  with_pretext = jax.eval_shape(lambda: dna_model.Model(23, pretext_classes=170).init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))["params"]
  assert _count(with_pretext) - _count(params) == 512 * 170 + 170 + 328_320 + 2


def _method(arg="standard,runlocal", classes=CLASSES, **overrides):
  config = dna_config.get_config(arg)
  config.update(overrides)
  dna_det.DnaDet.check_config(config)
  return dna_det.DnaDet(config, classes)


def _phase(name):
  # Phase's other fields (label, sampler, ...) do not reach the loss.
  return base.Phase(name, 1, {})


def test_grouped_batch_norm_is_torch_batch_norm_on_each_group_in_turn():
  import torch

  rng = np.random.default_rng(3)
  groups, n = 3, 4
  x = rng.normal(size=(groups * n, 5, 5, 6)).astype(np.float32) * 2 + 1
  bn = dna_model.BatchNorm()
  variables = bn.init(jax.random.key(0), jnp.asarray(x), train=False)
  variables["params"] = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 6), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}
  y, state = bn.apply(variables, jnp.asarray(x), train=True, groups=groups,
                      mutable=["batch_stats"])
  reference = torch.nn.BatchNorm2d(6)
  with torch.no_grad():
    reference.weight.copy_(torch.tensor(np.array(variables["params"]["scale"])))
    reference.bias.copy_(torch.tensor(np.array(variables["params"]["bias"])))
  outputs = [reference(torch.from_numpy(x[g * n:(g + 1) * n].transpose(0, 3, 1, 2)))
             for g in range(groups)]
  expected = torch.cat(outputs).detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["mean"], reference.running_mean.numpy(),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["var"], reference.running_var.numpy(),
                             rtol=1e-5, atol=1e-6)
  reference.eval()
  variables["batch_stats"] = state["batch_stats"]
  np.testing.assert_allclose(
      bn.apply(variables, jnp.asarray(x), train=False),
      reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1),
      rtol=1e-5, atol=1e-5)


def test_loss_is_its_parts_and_phases_touch_their_own_heads():
  method = _method()
  method.model = method.model.clone(dropout=0.0)  # so that separate forwards draw no masks
  rng = np.random.default_rng(1)
  crops = jnp.asarray(rng.normal(size=(4, 3, 16, 16, 3)), jnp.float32)  # N=4 images, V=3 crops
  labels = jnp.array([0, 2, 0, 1])
  variables = method.init(jax.random.key(0), crops)
  # The same variables from whole test images.
  same = method.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, same))
  # Non-trivial loss weights, so that a swapped weight would show.
  variables["params"]["awl"] = jnp.array([0.8, 1.3])
  variables["params"]["pretext_awl"] = jnp.array([1.1, 0.6])
  key = jax.random.key(5)
  batch = {"image": crops, "label": labels}

  @jax.jit
  def forward(params, stats, views):
    return method.model.apply({"params": params, "batch_stats": stats}, views, train=True,
                              mutable=["batch_stats"])

  # The attribution phase with the original's loop over crop positions (bn_per_crop), the
  # pre-training phase with all crops in one batch.
  for phase, per_crop, logits_key, projection_key, awl in (
      ("attribution", True, None, "projection", "awl"),
      ("pretrain", False, "pretext_logits", "pretext_projection", "pretext_awl")):
    method.config.bn_per_crop = per_crop
    loss_and_grads = jax.jit(jax.value_and_grad(
        lambda params, phase=phase: method.loss({**variables, "params": params}, batch, key,
                                                _phase(phase)), has_aux=True))
    (loss, (state, measurements)), grads = loss_and_grads(variables["params"])
    # By hand: the network in training mode on the crops, position after position in separate
    # forwards with the batch statistics carried (the original's loop), or on all of them in
    # one batch.
    stats = variables["batch_stats"]
    scores, projections = [], []
    if per_crop:
      for position in range(3):
        (logits, aux), new = forward(variables["params"], stats, crops[:, position])
        stats = new["batch_stats"]
        scores.append(np.asarray(aux[logits_key] if logits_key else logits, np.float64))
        projections.append(np.asarray(aux[projection_key], np.float64))
    else:
      views = jnp.swapaxes(crops, 0, 1).reshape(12, 16, 16, 3)
      (logits, aux), new = forward(variables["params"], stats, views)
      stats = new["batch_stats"]
      scores = list(np.asarray(aux[logits_key], np.float64).reshape(3, 4, -1))
      projections = list(np.asarray(aux[projection_key], np.float64).reshape(3, 4, -1))
    scores = np.stack(scores)  # (V, N, K)
    log_softmax = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
    ce = -np.mean([log_softmax[v, i, labels[i]] for v in range(3) for i in range(4)])
    contrastive = _supcon_by_loops(np.stack(projections, 1), np.asarray(labels), 0.07, 0.07)
    p = np.asarray(variables["params"][awl], np.float64)
    expected = (0.5 / p[0] ** 2 * ce + np.log(1 + p[0] ** 2)
                + 0.5 / p[1] ** 2 * contrastive + np.log(1 + p[1] ** 2))
    np.testing.assert_allclose(float(measurements["cross_entropy"]), ce, rtol=1e-4)
    np.testing.assert_allclose(float(measurements["supcon"]), contrastive, rtol=1e-4)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state["batch_stats"], stats)
    # Each phase moves its own heads only.
    norms = {name: float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(tree)))
             for name, tree in grads.items()}
    own = ({"pretext_head", "pretext_supcon", "pretext_awl"} if phase == "pretrain"
           else {"head", "supcon", "awl"})
    other = {"head", "supcon", "awl", "pretext_head", "pretext_supcon", "pretext_awl"} - own
    assert all(norms[name] > 0 for name in own | {"conv0", "conv7"}), norms
    assert all(norms[name] == 0 for name in other), norms


def test_the_official_double_softmax():
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  default = _method()
  official_method = _method("standard,runlocal,official")
  assert official_method.model.softmax_inside and not default.model.softmax_inside
  variables = default.init(jax.random.key(3), images)
  logits, _ = jax.jit(lambda v, x: default.model.apply(v, x, train=False))(variables, images)
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(jax.jit(default.predict)(variables, {"image": images}), probs,
                             rtol=1e-5)
  # `official`: the network's output is the probabilities, and the scores their softmax.
  twice = np.exp(probs) / np.exp(probs).sum(-1, keepdims=True)
  scores = jax.jit(official_method.predict)(variables, {"image": images})
  np.testing.assert_allclose(scores, twice, rtol=1e-5)
  assert (twice.argmax(-1) == probs.argmax(-1)).all()


def _torch_official(num_classes=23):
  """The official DNAAttributor's modules, re-stated: backbone = Simple_CNN (softmax inside),
  head = SupCon MLP 512 -> 512 -> 128, awl = AutomaticWeightedLoss(2)."""
  import torch
  from torch import nn

  class Block(nn.Module):  # dcgan_conv (4x4, stride 2) and vgg_layer (3x3)

    def __init__(self, nin, nout, kernel, stride):
      super().__init__()
      self.main = nn.Sequential(nn.Conv2d(nin, nout, kernel, stride, 1), nn.BatchNorm2d(nout),
                                nn.LeakyReLU(0.2))

    def forward(self, x):
      return self.main(x)

  class SimpleCNN(nn.Module):

    def __init__(self):
      super().__init__()
      layers, nin = [], 3
      for width in (64, 128, 256, 512):
        layers += [Block(nin, width, 4, 2), Block(width, width, 3, 1)]
        nin = width
      self.main = nn.Sequential(*layers)
      self.pool = nn.AdaptiveAvgPool2d(1)
      self.classification_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, num_classes))

    def forward(self, x):
      embedding = self.main(x)
      feature = self.pool(embedding).flatten(1)
      return torch.softmax(self.classification_head(feature), dim=1), embedding

  class Attributor(nn.Module):

    def __init__(self):
      super().__init__()
      self.backbone = SimpleCNN()
      self.head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
      self.awl = nn.Module()
      self.awl.params = nn.Parameter(torch.ones(2))

  return Attributor()


def _random_official_state(seed=0):
  import torch

  torch.manual_seed(seed)
  model = _torch_official()
  with torch.no_grad():
    for name, buffer in model.named_buffers():
      if name.endswith("running_mean"):
        buffer.normal_(0, 0.1)
      elif name.endswith("running_var"):
        buffer.uniform_(0.5, 2.0)
    for name, p in model.named_parameters():
      if ".main.1." in name:  # batch-norm affine parameters away from 1 and 0
        p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.1)
    model.awl.params.uniform_(0.5, 1.5)
  model.eval()
  state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  return model, state


def test_import_official_equals_the_torch_attributor():
  import torch

  model, state = _random_official_state()
  assert {k: tuple(v.shape) for k, v in state.items()} == LAYOUT
  config = dna_config.get_config("standard,official")
  imported = dna_det.import_official(state, config, "/unused")
  method = dna_det.DnaDet(config, [f"c{i}" for i in range(23)])
  # The variables Method.init makes, same structure and shapes.
  abstract = jax.eval_shape(method.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert jax.tree.structure(abstract) == jax.tree.structure(imported.variables)
  assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape, abstract, imported.variables))
  np.testing.assert_allclose(imported.variables["params"]["awl"], state["awl.params"])

  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    probs, embedding = model.backbone(xt)
    feature = model.backbone.pool(embedding).flatten(1)
    projection = torch.nn.functional.normalize(model.head(feature), dim=1)
    # The benchmark's metrics softmax the network's probabilities again.
    scores = torch.softmax(probs, dim=1)
  ours, (output, aux) = jax.jit(lambda v, x: (method.predict(v, {"image": x}),
                                               method.model.apply(v, x, train=False)))(
                                                   imported.variables, jnp.asarray(x))
  np.testing.assert_allclose(ours, scores.numpy(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(output, probs.numpy(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(aux["features"], feature.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(aux["projection"], projection.numpy(), rtol=1e-4, atol=1e-5)
  assert len(imported.notes) == 2


def test_import_official_rejects_a_missing_extra_or_misshaped_key():
  state = {k: np.zeros(shape, np.float32) for k, shape in LAYOUT.items()}
  config = dna_config.get_config("standard,official")
  missing = dict(state)
  del missing["head.2.bias"]
  with pytest.raises(ValueError, match="'head.2.bias'.*missing"):
    dna_det.import_official(missing, config, "/unused")
  with pytest.raises(ValueError, match="unexpected key 'backbone.extra'"):
    dna_det.import_official({**state, "backbone.extra": np.zeros(1)}, config, "/unused")
  with pytest.raises(ValueError, match="'awl.params' has shape"):
    dna_det.import_official({**state, "awl.params": np.zeros(3)}, config, "/unused")
  # A shrunk config cannot hold the official network.
  with pytest.raises(ValueError, match="config.model gives other shapes"):
    dna_det.import_official(state, dna_config.get_config("standard,runlocal"), "/unused")


def test_configs():
  for arg in ("standard", "semantic1", "standard,official", "standard,minibench",
              "semantic1,runlocal"):
    config = dna_config.get_config(arg)
    dna_det.DnaDet.check_config(config)
    assert config.model.softmax_inside == ("official" in arg)
    assert config.sampler == ("shuffle" if "official" in arg else "balanced")
  config = dna_config.get_config("standard")
  assert config.input.transform == ("resize(256)|central_crop(256)|resize(512, 512, "
                                    "method='bicubic')|random_crops(16, 64)|normalize('half')")
  assert config.input.eval_transform == ("resize(256)|central_crop(256)|resize(512, 512, "
                                         "method='bicubic')|normalize('half')")
  assert "|dna_transformation|" in config.pretrain.transform
  assert config.num_epochs == config.pretrain.num_epochs == 10
  assert config.optimizer.learning_rate == config.pretrain.optimizer.learning_rate == 1e-4
  bad = dna_config.get_config("standard")
  bad.pretrain.transform = bad.input.transform
  with pytest.raises(ValueError, match="config.pretrain.transform"):
    dna_det.DnaDet.check_config(bad)


def test_phases():
  pretrain, attribution = _method("standard").phases()
  assert (pretrain.name, pretrain.label, pretrain.sampler) == ("pretrain", "transform_id",
                                                                "shuffle")
  assert not pretrain.select_best and not pretrain.validate
  assert "dna_transformation" in pretrain.transform
  assert (attribution.name, attribution.label, attribution.sampler) == ("attribution", "label",
                                                                        "balanced")
  assert attribution.select_best and attribution.validate and attribution.transform is None
  assert _method("standard,official").phases()[1].sampler == "shuffle"
