"""FSD against a torch re-statement (torchvision ResNet, fc = Linear(2048, 1024) -> Linear(1024, C)),
its parameter count and recipe; and the official ResNet-50 checkpoint import of the resnet50
method (the same torchvision network, which the same reference checks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fsd as fsd_config
from configs import resnet50 as resnet50_config
from iab_jax import optimizers
from iab_jax.methods import classifier, fsd, official


def torch_net(stage_sizes, fc, seed=0):
  """torchvision's ResNet with these stage sizes and head `fc`, random weights and batch-norm
  statistics away from their (0, 1) start, in eval mode."""
  import torch
  import torchvision
  torch.manual_seed(seed)
  net = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(stage_sizes))
  net.fc = fc
  with torch.no_grad():
    for name, module in net.named_modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return torch, net.eval()


def torch_logits(torch, net, x):
  with torch.no_grad():
    return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def assert_logits_close(ours, reference):
  ours = np.asarray(ours)
  assert ours.shape == reference.shape
  assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


# rbg keys: XLA compiles threefry's initialisers several times slower on CPU (tests/models/harness).
RNG = jax.random.key(0, impl="rbg")
STAGES = (1, 1, 1, 1)  # a one-block-per-stage ResNet: every kind of block, a fraction of the cost


def test_fsd_logits_equal_torch():
  import torch
  head = torch.nn.Sequential(torch.nn.Linear(2048, 1024), torch.nn.Linear(1024, 5))
  torch, net = torch_net(STAGES, head)
  state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
  config = fsd_config.get_config("standard")
  config.model.update({"stage_sizes": STAGES, "pretrained": ""})
  method = fsd.Fsd(config, [f"c{i}" for i in range(5)])
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  ours = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.asarray(x)))
  converted = fsd.from_torch(state, stage_sizes=STAGES)
  # The converted tree is exactly the method's: same keys, same shapes.
  assert jax.tree.map(jnp.shape, converted) == jax.tree.map(lambda s: s.shape, ours)
  probs, (logits, aux) = jax.jit(lambda v, x: (method.predict(v, {"image": x}), method.model.apply(
      v, x, train=False)))(converted, x)
  assert_logits_close(logits, torch_logits(torch, net, x))
  assert aux["embedding"].shape == (2, 1024)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-6)


def test_fsd_parameter_count_and_recipe():
  config = fsd_config.get_config("standard")
  method = fsd.Fsd(config, [f"c{i}" for i in range(23)])
  shapes = jax.eval_shape(lambda: method.model.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3)),
                                                    train=False))
  count = lambda tree: sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))
  # ResNet-50 without fc (METHODS.md section 5: 23,508,032) + Linear(2048, 1024) + Linear(1024, 23).
  assert count(shapes["params"]) == 23_508_032 + 2048 * 1024 + 1024 + 1024 * 23 + 23 == 25_629_783
  assert shapes["params"]["backbone"]["fc"]["kernel"].shape == (2048, 1024)
  assert shapes["params"]["classifier"]["kernel"].shape == (1024, 23)
  assert config.input.transform == config.input.eval_transform == \
      "resize(256)|central_crop(256)|normalize('imagenet')"
  assert config.num_epochs == fsd_config.get_config("semantic2").num_epochs == 10
  assert config.input.batch_size == 32 and config.model.pretrained == "resnet50.tv_in1k"
  # Adam 1e-4, halved every 5 epochs (StepLR per epoch): 100 steps per epoch here.
  schedule = optimizers.learning_rate_schedule(config.optimizer, 100, 1000)
  np.testing.assert_allclose([schedule(s) for s in (0, 499, 500, 999)],
                             [1e-4, 1e-4, 5e-5, 5e-5], rtol=1e-6)
  assert config.optimizer.name == "adam"
  fsd.Fsd.check_config(config)
  bad = fsd_config.get_config("standard")
  bad.model.embed = 3
  with pytest.raises(ValueError, match=r"config\.model\.embed"):
    fsd.Fsd.check_config(bad)


def test_fsd_loads_imagenet_weights_into_the_backbone(tmp_path):
  """A torchvision-layout file fills the ResNet; its 1000-way fc does not fit the embedding layer,
  which keeps its initialisation, as timm's num_classes=1024 model does."""
  import torch
  from safetensors.numpy import save_file

  torch, net = torch_net(STAGES, torch.nn.Linear(2048, 1000), seed=1)
  state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
  path = tmp_path / "model.safetensors"
  save_file(state, str(path))
  config = fsd_config.get_config("standard")
  config.model.update({"stage_sizes": STAGES, "pretrained": str(path)})
  method = fsd.Fsd(config, ["a", "b"])
  images = jnp.zeros((1, 32, 32, 3))
  loaded = method.init(RNG, images)
  fresh = method.init(RNG, images, pretrained=False)
  np.testing.assert_array_equal(loaded["params"]["backbone"]["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["bn1"]["var"],
                                state["bn1.running_var"])
  for name in ("fc", "classifier"):
    tree = fresh["params"] if name == "classifier" else fresh["params"]["backbone"]
    got = loaded["params"] if name == "classifier" else loaded["params"]["backbone"]
    np.testing.assert_array_equal(got[name]["kernel"], tree[name]["kernel"])


def test_fsd_minibench_config_is_small():
  config = fsd_config.get_config("standard,minibench")
  assert config.model.stage_sizes == (1, 1, 1, 1) and config.model.pretrained == ""
  assert config.random_init_fallback


# ---------------------------------------------------------------------------------------------
# The official ResNet-50 attributor's checkpoint (the resnet50 method).


@pytest.fixture(scope="module")
def official_resnet50():
  import torch
  _, backbone = torch_net((3, 4, 6, 3), torch.nn.Identity(), seed=2)

  class Attributor(torch.nn.Module):  # the official attributor's module names
    def __init__(self):
      super().__init__()
      self.backbone = backbone
      self.fc = torch.nn.Linear(2048, 23)

    def forward(self, x):
      return self.fc(self.backbone(x))

  net = Attributor().eval()
  state = {k: v.numpy().astype(np.float32) for k, v in net.state_dict().items()}
  return torch, net, state


def test_import_official_resnet50_logits_equal_torch(official_resnet50, tmp_path):
  torch, net, state = official_resnet50
  assert {k: v.shape for k, v in state.items()} == official.read_layout(
      classifier.OFFICIAL_LAYOUT_RESNET50)
  config = resnet50_config.get_config("standard,official")
  result = classifier.import_official_resnet50(state, config, str(tmp_path))
  method = classifier.Classifier(config, [f"c{i}" for i in range(23)])
  x = np.random.default_rng(3).standard_normal((2, 64, 64, 3)).astype(np.float32)
  expected = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.asarray(x), pretrained=False))
  assert jax.tree.map(jnp.shape, result.variables) == jax.tree.map(lambda s: s.shape, expected)
  probs, (logits, _) = jax.jit(lambda v, x: (method.predict(v, {"image": x}), method.model.apply(
      v, x, train=False)))(result.variables, x)
  reference = torch_logits(torch, net, x)
  assert_logits_close(logits, reference)
  np.testing.assert_allclose(probs, jax.nn.softmax(reference), atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ("missing", r"key 'backbone\.layer3\.2\.conv2\.weight' of the official layout is missing"),
    ("extra", r"unexpected key 'head\.weight'"),
    ("shape", r"key 'fc\.weight' has shape \(10, 2048\), the official layout has \(23, 2048\)"),
])
def test_import_official_resnet50_rejects_other_layouts(official_resnet50, change, message):
  state = dict(official_resnet50[2])
  if change == "missing":
    del state["backbone.layer3.2.conv2.weight"]
  elif change == "extra":
    state["head.weight"] = np.zeros((2, 2), np.float32)
  else:
    state["fc.weight"] = np.zeros((10, 2048), np.float32)
  with pytest.raises(ValueError, match=message) as e:
    classifier.import_official_resnet50(state, None, "")
  assert "\n" not in str(e.value)
