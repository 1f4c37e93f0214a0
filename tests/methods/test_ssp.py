"""SSP: the published SRM filters, the upsampling and the SRM layer against torch, the official
parameter counts, the checkpoint import against torchvision's resnet50 + Linear head, and the
method's loss and predict."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import ssp as ssp_config
from iab_jax.methods import official
from iab_jax.methods import ssp as method

OFFICIAL_CLASSES = 23

# SSP's srm_conv.py (and the SRM of Fridrich & Kodovsky): KB / 4, KV / 12, 2nd-order horizontal / 2.
KB = np.array([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0],
               [0, 0, 0, 0, 0]]) / 4
KV = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
               [-1, 2, -2, 2, -1]]) / 12
HOR2 = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0],
                 [0, 0, 0, 0, 0]]) / 2


def test_srm_kernel_equals_the_published_filters():
  kernel = method.srm_kernel()
  assert kernel.shape == (3, 3, 5, 5) and kernel.dtype == np.float32
  for out, expected in enumerate((KB, KV, HOR2)):
    for channel in range(3):  # the same filter on every input channel
      np.testing.assert_allclose(kernel[out, channel], expected, rtol=1e-7)
  assert kernel.size == 225


def test_srm_filter_and_upsampling_equal_torch():
  import torch
  import torch.nn.functional as F

  rng = np.random.default_rng(0)
  x = rng.normal(0, 2, (2, 8, 8, 3)).astype(np.float32)  # wide enough to hit the clipping
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2))
  with torch.no_grad():
    up = F.interpolate(tx, (32, 32), mode="bilinear")
    srm = F.hardtanh(F.conv2d(up, torch.from_numpy(method.srm_kernel()), padding=2), -3, 3)
  ours_up = method.upsample_bilinear(jnp.asarray(x), 32)
  np.testing.assert_allclose(np.asarray(ours_up), up.numpy().transpose(0, 2, 3, 1), rtol=1e-5,
                             atol=1e-5)
  ours_srm = np.asarray(method.srm_filter(ours_up))
  np.testing.assert_allclose(ours_srm, srm.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  assert np.abs(ours_srm).max() == 3.0


def test_parameter_counts_equal_the_official_model():
  net = method.SspNet(num_classes=OFFICIAL_CLASSES)
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                              train=False))
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
  assert count(variables["params"]["backbone"]) == 23_508_032
  assert count(variables["params"]["fc"]) == 47_127
  trainable = count(variables["params"])
  assert trainable == 23_555_159
  assert trainable + method.srm_kernel().size == 23_555_384


# ---------------------------------------------------------------------------------------------
# The official attributor restated: torchvision resnet50 (fc = Identity), Linear(2048, C), srm.


@functools.lru_cache(maxsize=None)
def torch_official():
  import torch
  import torchvision

  torch.manual_seed(0)
  net = torch.nn.Module()
  net.srm = torch.nn.Module()
  net.srm.kernel = torch.nn.Parameter(torch.from_numpy(method.srm_kernel()), requires_grad=False)
  net.backbone = torchvision.models.resnet50(weights=None)
  net.backbone.fc = torch.nn.Identity()
  net.fc = torch.nn.Linear(2048, OFFICIAL_CLASSES)
  with torch.no_grad():  # trained-looking BatchNorms
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  net.eval()
  state = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
  return net, state


def official_config():
  return ssp_config.get_config("standard,official")


def test_restatement_has_the_official_layout():
  _, state = torch_official()
  layout = official.read_layout(method.OFFICIAL_LAYOUT)
  assert {k: tuple(v.shape) for k, v in state.items()} == layout


def test_imported_logits_equal_torch():
  import torch
  import torch.nn.functional as F

  net, state = torch_official()
  config = official_config()
  result = method.import_official(state, config, "/nonexistent")
  assert not result.notes  # srm=False under official: nothing to warn about
  # The official forward, at a small size: 16x16 patches upsampled to 64x64.
  rng = np.random.default_rng(1)
  x = rng.normal(0, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    up = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), (64, 64), mode="bilinear")
    expected = net.fc(net.backbone(up)).numpy()
  ours = method.SspNet(num_classes=OFFICIAL_CLASSES, srm=False, upsample_to=64)
  logits, aux = jax.jit(lambda v, x: ours.apply(v, x, train=False))(result.variables, x)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
  assert aux["features"].shape == (2, 2048)

  # Ssp.init makes the same tree for the official config.
  m = method.Ssp(config, [str(i) for i in range(OFFICIAL_CLASSES)])
  init = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False))
  shapes = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)
  assert shapes(init) == shapes(result.variables)
  default = method.import_official(state, ssp_config.get_config("standard"), "/nonexistent")
  assert any("SRM" in note for note in default.notes)


def test_import_rejects_missing_extra_misshaped_and_foreign_srm():
  _, state = torch_official()
  config = official_config()

  def fails(bad, match):
    with pytest.raises(ValueError, match=match) as info:
      method.import_official(bad, config, "/nonexistent")
    assert "\n" not in str(info.value)

  fails({k: v for k, v in state.items() if k != "srm.kernel"}, "srm.kernel")
  fails({**state, "head.weight": np.zeros((2, 2), np.float32)}, "head.weight")
  fails({**state, "fc.weight": np.zeros((7, 2048), np.float32)}, "fc.weight")
  fails({**state, "srm.kernel": state["srm.kernel"] * 0.5}, "srm.kernel")


# ---------------------------------------------------------------------------------------------
# The method.


def test_method_loss_and_predict():
  config = ssp_config.get_config("standard,runlocal")
  assert config.model.srm and config.model.upsample_to == 32
  m = method.Ssp(config, [f"c{i}" for i in range(4)])
  images = jnp.asarray(np.random.default_rng(2).normal(0, 1, (4, 16, 16, 3)), jnp.float32)
  variables = m.init(jax.random.key(0), images)
  batch = {"image": images, "label": jnp.array([0, 1, 2, 3], jnp.int32)}
  loss, (state, measurements) = jax.jit(lambda v, b: m.loss(v, b, jax.random.key(1), None))(
      variables, batch)
  assert np.isfinite(float(loss)) and "batch_stats" in state
  probs = jax.jit(m.predict)(variables, batch)
  assert probs.shape == (4, 4)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


def test_config_recipes():
  standard = ssp_config.get_config("standard")
  assert standard.num_epochs == 10 and ssp_config.get_config("semantic2").num_epochs == 10
  assert standard.optimizer.learning_rate == 1e-4 and "schedule" not in standard.optimizer
  assert standard.input.transform == standard.input.eval_transform == (
      "resize(256)|central_crop(256)|simplest_patch(64, 32)|normalize('imagenet')")
  assert standard.model.srm and not official_config().model.srm
  method.Ssp.check_config(standard)
  bad = ml_collections.ConfigDict(standard.to_dict())
  bad.model.depth = 3
  with pytest.raises(ValueError, match="config.model.depth"):
    method.Ssp.check_config(bad)
