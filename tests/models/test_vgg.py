"""VGG-16 and AlexNet: torchvision's architectures, initialisers and weights, checked against them.

AlexNet lives in iab_jax/models/alexnet.py but is tested here: it is the same pattern (torchvision
features + adaptive pool + dropout classifier) and shares the adaptive pool. Comparisons with
torchvision and timm skip when they do not import; everything else runs on numpy state dicts
written here with torchvision's key names and shapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models
from iab_jax.models import alexnet, vgg
from tests.models import harness
from tests.models.harness import (abstract, assert_close, assert_each_close, flat, nchw,
                                  num_params, numpy_state, torch_forward)

# The same code paths as VGG-16 at a fraction of the cost: five stages, a 2-conv stage, a 7x7 pool.
TINY = dict(stages=((8, 8), (16,), (16,), (16,), (16,)), hidden=32)
VGG16_PARAMS = 138_357_544  # torchvision's documented figure
ALEXNET_PARAMS = 61_100_840


def _tensors(shapes, scale, seed, random):
  if not random:  # zero-stride views: full-size key and shape checks without allocating 0.5 GB
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  rng = np.random.default_rng(seed)
  return {k: scale * rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def vgg_state(stages=vgg.VGG16_STAGES, hidden=4096, num_classes=1000, pool=7, seed=0,
              random=True):
  """A torchvision VGG state dict, its keys and shapes written out by hand."""
  shapes, index, cin = {}, 0, 3
  for widths in stages:
    for w in widths:
      shapes[f"features.{index}.weight"] = (w, cin, 3, 3)
      shapes[f"features.{index}.bias"] = (w,)
      index, cin = index + 2, w
    index += 1
  shapes.update({"classifier.0.weight": (hidden, cin * pool * pool), "classifier.0.bias": (hidden,),
                 "classifier.3.weight": (hidden, hidden), "classifier.3.bias": (hidden,),
                 "classifier.6.weight": (num_classes, hidden), "classifier.6.bias": (num_classes,)})
  return _tensors(shapes, 0.1, seed, random)


def alexnet_state(num_classes=1000, seed=0, random=True):
  shapes = {}
  for index, (cout, cin, k) in zip((0, 3, 6, 8, 10), ((64, 3, 11), (192, 64, 5), (384, 192, 3),
                                                       (256, 384, 3), (256, 256, 3))):
    shapes[f"features.{index}.weight"] = (cout, cin, k, k)
    shapes[f"features.{index}.bias"] = (cout,)
  shapes.update({"classifier.1.weight": (4096, 256 * 36), "classifier.1.bias": (4096,),
                 "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
                 "classifier.6.weight": (num_classes, 4096), "classifier.6.bias": (num_classes,)})
  return _tensors(shapes, 0.05, seed, random)


init = functools.partial(harness.init, hw=(32, 32))


@pytest.fixture(scope="module")
def tiny():
  model = vgg.Model(num_classes=3, **TINY)
  return model, init(model)


@pytest.fixture(scope="module")
def tiny_alexnet():
  model = alexnet.Model(num_classes=5, hidden=32)
  return model, init(model, hw=(67, 67))


# ---------------------------------------------------------------------------------------------
# Architecture.


def test_registry_finds_both():
  assert models.get("vgg") is vgg and models.get("alexnet") is alexnet


def test_parameter_counts_are_torchvisions():
  shapes = abstract(vgg.Model(num_classes=1000), (224, 224))
  assert set(shapes) == {"params"} and num_params(shapes) == VGG16_PARAMS
  no_head = abstract(vgg.Model(num_classes=0), (224, 224))
  assert "fc8" not in no_head["params"] and num_params(no_head) == VGG16_PARAMS - 4096 * 1000 - 1000
  shapes = abstract(alexnet.Model(num_classes=1000), (224, 224))
  assert num_params(shapes) == ALEXNET_PARAMS


def test_parameter_names_and_shapes():
  params = abstract(vgg.Model(num_classes=1000), (224, 224))["params"]
  assert sorted(params) == ["fc6", "fc7", "fc8", "features"]
  assert sorted(params["features"]) == sorted(
      f"conv{i}_{j}" for i, n in enumerate((2, 2, 3, 3, 3), 1) for j in range(1, n + 1))
  assert params["features"]["conv3_3"]["kernel"].shape == (3, 3, 256, 256)
  assert params["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
  assert vgg.STAGE_NAMES == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
  assert vgg.stages_of(params["features"]) == vgg.VGG16_STAGES
  params = abstract(alexnet.Model(num_classes=1000), (224, 224))["params"]
  assert sorted(params["features"]) == [f"conv{i}" for i in range(1, 6)]
  assert params["features"]["conv1"]["kernel"].shape == (11, 11, 3, 64)
  assert params["fc6"]["kernel"].shape == (6 * 6 * 256, 4096)


def test_initialisers_are_torchvisions(tiny, tiny_alexnet):
  params = tiny[1]["params"]
  k = np.asarray(params["features"]["conv2_1"]["kernel"])  # 8 -> 16 channels: fan_out 144
  # VGG: kaiming_normal_(fan_out, relu), untruncated; N(0, 0.01) linears; zero biases.
  assert k.std() == pytest.approx(np.sqrt(2 / (16 * 9)), rel=0.08)
  assert np.abs(k).max() > 3 * k.std()
  assert np.asarray(params["fc6"]["kernel"]).std() == pytest.approx(0.01, rel=0.02)
  for name in ("fc6", "fc7", "fc8"):
    np.testing.assert_array_equal(params[name]["bias"], 0)
  np.testing.assert_array_equal(params["features"]["conv1_1"]["bias"], 0)
  # AlexNet: torch's defaults, uniform(+-1/sqrt(fan_in)) for weights and biases.
  params = tiny_alexnet[1]["params"]
  for name, fan_in in (("conv2", 64 * 25), ("conv5", 256 * 9)):
    for field in ("kernel", "bias"):
      w = np.abs(np.asarray(params["features"][name][field]))
      assert w.max() <= 1 / np.sqrt(fan_in) and w.max() > 0.9 / np.sqrt(fan_in)
  for name, fan_in in (("fc6", 9216), ("fc8", 32)):
    w = np.abs(np.asarray(params[name]["kernel"]))
    assert w.max() <= 1 / np.sqrt(fan_in) and w.max() > 0.8 / np.sqrt(fan_in)


def test_outputs_and_aux(tiny, tiny_alexnet):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 64, 48, 3))
  logits, aux = model.apply(variables, x, train=False)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32
  assert aux["features"].shape == (2, 32) and aux["features"].dtype == jnp.float32
  assert [s.shape for s in aux["stages"]] == [(2, 64, 48, 8), (2, 32, 24, 16), (2, 16, 12, 16),
                                              (2, 8, 6, 16), (2, 4, 3, 16)]
  np.testing.assert_allclose(
      logits, aux["features"] @ variables["params"]["fc8"]["kernel"]
      + variables["params"]["fc8"]["bias"], rtol=1e-5, atol=1e-6)
  # num_classes=0: the backbone's output is the fc7 feature.
  trunk = vgg.Model(num_classes=0, **TINY)
  params = {k: v for k, v in variables["params"].items() if k != "fc8"}
  out, aux0 = trunk.apply({"params": params}, x, train=False)
  np.testing.assert_array_equal(out, aux["features"])
  np.testing.assert_array_equal(aux0["features"], aux["features"])

  model, variables = tiny_alexnet
  logits, aux = model.apply(variables, jnp.ones((2, 67, 67, 3)), train=False)
  assert logits.shape == (2, 5) and aux["features"].shape == (2, 32)
  # 67 -> conv1 16 -> pool 7 -> conv2 7 -> pool 3 -> conv3..5 3
  assert [s.shape[1:] for s in aux["stages"]] == [(16, 16, 64), (7, 7, 192), (3, 3, 384),
                                                  (3, 3, 256), (3, 3, 256)]


def test_dropout_only_in_training(tiny):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
  a, _ = model.apply(variables, x, train=False)
  b, _ = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(a, b)
  (_, aux1), (_, aux2) = (model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(s)})
                          for s in (0, 1))
  assert not np.allclose(aux1["features"], aux2["features"])
  no_dropout = vgg.Model(num_classes=3, dropout=0.0, **TINY)
  c, _ = no_dropout.apply(variables, x, train=True)
  np.testing.assert_allclose(c, a, rtol=1e-6)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, train=True)


def test_bfloat16_compute(tiny):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  ref, _ = model.apply(variables, x, train=False)
  logits, aux = vgg.Model(num_classes=3, dtype=jnp.bfloat16, **TINY).apply(variables, x,
                                                                           train=False)
  assert logits.dtype == jnp.float32 and aux["features"].dtype == jnp.float32
  assert aux["stages"][0].dtype == jnp.bfloat16
  assert float(jnp.abs(logits - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 1e-3


@pytest.mark.parametrize("hw,size", [((3, 5), 7), ((13, 9), 7), ((20, 20), 6), ((7, 7), 7),
                                     ((1, 1), 6)])
def test_adaptive_avg_pool_is_torchs(hw, size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((2, *hw, 4)).astype(np.float32)
  ref = torch.nn.functional.adaptive_avg_pool2d(nchw(x), size)
  out = vgg.adaptive_avg_pool(jnp.asarray(x), size)
  np.testing.assert_allclose(out, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Converters.


def test_from_torchvision_maps_transposes_and_permutes_fc6():
  state = vgg_state(**TINY, num_classes=10)
  params = vgg.from_torchvision(state, stages=TINY["stages"])["params"]
  np.testing.assert_array_equal(params["features"]["conv1_1"]["kernel"],
                                state["features.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["features"]["conv1_2"]["bias"], state["features.2.bias"])
  # Stage 2 starts after conv, relu, conv, relu, pool: index 5.
  np.testing.assert_array_equal(params["features"]["conv2_1"]["kernel"][1, 2, 3, 4],
                                state["features.5.weight"][4, 3, 1, 2])
  np.testing.assert_array_equal(params["features"]["conv5_1"]["bias"], state["features.14.bias"])
  # fc6 row (h, w, c) = torch column c * 49 + h * 7 + w.
  h, w, c, o = 2, 5, 11, 3
  np.testing.assert_array_equal(params["fc6"]["kernel"][(h * 7 + w) * 16 + c, o],
                                state["classifier.0.weight"][o, c * 49 + h * 7 + w])
  np.testing.assert_array_equal(params["fc7"]["kernel"], state["classifier.3.weight"].T)
  np.testing.assert_array_equal(params["fc8"]["bias"], state["classifier.6.bias"])
  assert len(jax.tree.leaves(params)) == len(state)


def test_from_torchvision_matches_the_models_tree():
  shapes = abstract(vgg.Model(num_classes=1000), (224, 224))
  converted = vgg.from_torchvision(vgg_state(random=False))
  assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, shapes)
  shapes = abstract(alexnet.Model(num_classes=1000), (224, 224))
  converted = alexnet.from_torchvision(alexnet_state(random=False))
  assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, shapes)


def test_from_torchvision_errors():
  state = vgg_state(**TINY)
  del state["features.2.weight"]
  state["features.1.weight"] = np.zeros(8, np.float32)
  with pytest.raises(ValueError, match=r"missing keys features\.2\.weight; unexpected keys "
                                       r"features\.1\.weight"):
    vgg.from_torchvision(state, stages=TINY["stages"])
  # VGG-19 is not VGG-16.
  with pytest.raises(ValueError, match=r"unexpected keys .*features\.34\.weight"):
    vgg.from_torchvision(vgg_state(stages=((64, 64), (128, 128), (256,) * 4, (512,) * 4,
                                           (512,) * 4), random=False))
  state = vgg_state(**TINY)
  state["features.5.weight"] = state["features.5.weight"][:, :4]
  with pytest.raises(ValueError, match=r"features\.5\.weight: expected shape \(16, 8, 3, 3\), "
                                       r"got \(16, 4, 3, 3\)"):
    vgg.from_torchvision(state, stages=TINY["stages"])
  state = vgg_state(**TINY)
  state["classifier.0.weight"] = state["classifier.0.weight"][:, :-16]
  with pytest.raises(ValueError, match=r"classifier\.0\.weight: 768 inputs are not 16 channels"):
    vgg.from_torchvision(state, stages=TINY["stages"])
  with pytest.raises(ValueError, match="classifier.6.weight has 1000 classes, expected "
                                       "num_classes=7"):
    vgg.from_torchvision(vgg_state(**TINY), stages=TINY["stages"], num_classes=7)

  state = alexnet_state(random=False)
  del state["classifier.4.bias"]
  with pytest.raises(ValueError, match=r"missing keys classifier\.4\.bias"):
    alexnet.from_torchvision(state)
  state = alexnet_state(random=False)
  state["features.3.weight"] = state["features.3.weight"][:, :, :3, :3]
  with pytest.raises(ValueError, match=r"features\.3\.weight: expected shape \(192, 64, 5, 5\)"):
    alexnet.from_torchvision(state)


def timm_layout(state):
  """The torchvision -> timm renaming and reshaping, written out by hand."""
  out = {}
  for k, v in state.items():
    if k.startswith("classifier.0."):
      k, v = "pre_logits.fc1." + k.split(".")[-1], (v.reshape(v.shape[0], -1, 7, 7)
                                                    if v.ndim == 2 else v)
    elif k.startswith("classifier.3."):
      k, v = "pre_logits.fc2." + k.split(".")[-1], (v[:, :, None, None] if v.ndim == 2 else v)
    elif k.startswith("classifier.6."):
      k = "head.fc." + k.split(".")[-1]
    out[k] = v
  return out


def test_from_timm_inverts_timms_filter():
  state = vgg_state(**TINY)
  expected = flat(vgg.from_torchvision(state, stages=TINY["stages"]))
  for layout in (timm_layout(state),):
    got = flat(vgg.from_timm(layout, stages=TINY["stages"]))
    assert got.keys() == expected.keys()
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=str(key))


def test_timm_layout_is_timms():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm", reason="timm is needed to check its VGG layout")
  from timm.models import vgg as timm_vgg
  # Shapes only (meta tensors): the layouts differ by renames and reshapes.
  state = vgg_state(random=False)
  with torch.device("meta"):
    filtered = timm_vgg._filter_fn({k: torch.empty(v.shape) for k, v in state.items()})
    net = timm.create_model("vgg16", pretrained=False)
  mine = {k: v.shape for k, v in timm_layout(state).items()}
  # timm's own torchvision -> timm filter gives the layout written by hand above, which is also
  # the key names and shapes of timm's vgg16.
  assert {k: tuple(v.shape) for k, v in filtered.items()} == mine
  assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == mine


# ---------------------------------------------------------------------------------------------
# load_pretrained.


def test_vgg_load_pretrained(tmp_path):
  state = vgg_state(**TINY, num_classes=10)
  expected = flat(vgg.from_torchvision(state, stages=TINY["stages"]))
  tv, timm_file = tmp_path / "tv.safetensors", tmp_path / "timm.safetensors"
  save_file(state, str(tv))
  save_file(timm_layout(state), str(timm_file))
  model = vgg.Model(num_classes=10, **TINY)
  fresh = init(model)
  for path in (tv, timm_file):
    loaded = flat(vgg.load_pretrained(fresh, path))
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
      np.testing.assert_array_equal(loaded[key], value, err_msg=str(key))
  loaded = flat(vgg.load_pretrained(abstract(model, (32, 32)), str(tv)))
  np.testing.assert_array_equal(loaded[("params", "fc6", "kernel")],
                                expected[("params", "fc6", "kernel")])
  # A head of another size stays fresh; a model without one drops the file's.
  fresh7 = init(vgg.Model(num_classes=7, **TINY))
  loaded = flat(vgg.load_pretrained(fresh7, tv))
  for key, value in loaded.items():
    want = flat(fresh7)[key] if key[1] == "fc8" else expected[key]
    np.testing.assert_array_equal(value, want, err_msg=str(key))
  loaded = vgg.load_pretrained(init(vgg.Model(num_classes=0, **TINY)), tv)
  assert "fc8" not in loaded["params"]
  np.testing.assert_array_equal(loaded["params"]["fc7"]["bias"], state["classifier.3.bias"])


def test_vgg_load_pretrained_errors(tmp_path):
  path = tmp_path / "vgg.safetensors"
  save_file(vgg_state(**dict(TINY, hidden=16)), str(path))
  fresh = init(vgg.Model(num_classes=1000, **TINY))
  with pytest.raises(ValueError, match=r"shape mismatch for params/fc6/kernel: file \(784, 16\)"):
    vgg.load_pretrained(fresh, path)
  with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors.*timm/vgg16\.tv_in1k"):
    vgg.load_pretrained(fresh, tmp_path / "nowhere.safetensors")


def test_alexnet_load_pretrained(tmp_path):
  path = tmp_path / "alexnet.safetensors"
  # Random where small; the 4096-wide linears are zeros but for a marker (writing 244 MB of random
  # numbers would cost more than the rest of this file).
  rng = np.random.default_rng(0)
  state = {k: np.zeros(v.shape, np.float32) if v.size > 1e6 else
           rng.standard_normal(v.shape, dtype=np.float32)
           for k, v in alexnet_state(num_classes=1000, random=False).items()}
  state["classifier.4.weight"][5, 7] = 3.0
  save_file(state, str(path))
  expected = flat(alexnet.from_torchvision(state))
  target = abstract(alexnet.Model(num_classes=3), (224, 224))
  fresh_head = {"kernel": jnp.zeros((4096, 3)), "bias": jnp.ones(3)}
  target["params"]["fc8"] = fresh_head
  loaded = flat(alexnet.load_pretrained(target, path))
  for key, value in loaded.items():
    if key[1] == "fc8":
      np.testing.assert_array_equal(value, flat({"params": {"fc8": fresh_head}})[key])
    else:
      np.testing.assert_array_equal(value, expected[key], err_msg=str(key))
  with pytest.raises(FileNotFoundError, match=r"alexnet-owt-7be5be79\.pth"):
    alexnet.load_pretrained(target, tmp_path / "missing.safetensors")


def test_checkpoints_entries():
  from iab_jax.data import transforms
  for module in (vgg, alexnet):
    for name, entry in module.CHECKPOINTS.items():
      assert {"source", "filename", "layout", "arch", "preprocess", "notes"} <= set(entry), name
      transforms.parse(entry["preprocess"])
      module.Model(num_classes=1000, **entry["arch"])


# ---------------------------------------------------------------------------------------------
# Parity with torchvision itself.


def _torchvision_net(name, seed, expected_params):
  """torchvision's `name` in eval mode, randomised: non-zero biases and classifier weights of the
  scale of the convs' (torchvision's are 0.01)."""
  import torch
  import torchvision

  torch.manual_seed(seed)
  net = getattr(torchvision.models, name)(weights=None)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, 1.0 / m.in_features ** 0.5)
      if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
        m.bias.normal_(0.0, 0.1)
  assert sum(p.numel() for p in net.parameters()) == expected_params
  return net.eval()


def _check_parity(net, model, variables, x, stage_relus, fc7_relu):
  """Our logits, fc7 feature and stages against torchvision's, whose ReLUs at these indices of
  `features` close the stages and at this index of `classifier` follows fc7."""
  taps = {i: net.features[i] for i in stage_relus}
  logits, ref = torch_forward(net, x, {**taps, "fc7": net.classifier[fc7_relu]})
  out, aux = model.apply(variables, jnp.asarray(x), train=False)
  assert_close(out, logits, 1e-4)
  assert_close(aux["features"], ref["fc7"], 1e-4)
  assert_each_close(aux["stages"], [ref[i] for i in stage_relus], 1e-4)


@pytest.fixture(scope="module")
def torch_vgg16():
  net = _torchvision_net("vgg16", 0, VGG16_PARAMS)
  variables = vgg.from_torchvision(numpy_state(net))
  return net, jax.tree.map(jnp.asarray, variables)


# The ReLUs closing each stage (relu1_2 ... relu5_3) and the ReLU after fc7.
_VGG16_STAGE_RELUS, _VGG16_FC7_RELU = (3, 8, 15, 22, 29), 4


@pytest.mark.parametrize("hw", [(224, 224), (100, 150), (45, 67)])
def test_vgg16_parity_with_torchvision(torch_vgg16, hw):
  net, variables = torch_vgg16
  x = np.random.default_rng(hw[0]).standard_normal((2 if hw[0] < 224 else 1, *hw, 3))
  x = x.astype(np.float32)
  _check_parity(net, vgg.Model(num_classes=1000), variables, x, _VGG16_STAGE_RELUS,
                _VGG16_FC7_RELU)


def test_alexnet_parity_with_torchvision():
  net = _torchvision_net("alexnet", 1, ALEXNET_PARAMS)
  variables = alexnet.from_torchvision(numpy_state(net))
  model = alexnet.Model(num_classes=1000)
  for hw in ((224, 224), (67, 95)):
    x = np.random.default_rng(hw[1]).standard_normal((2, *hw, 3)).astype(np.float32)
    _check_parity(net, model, variables, x, (1, 4, 7, 9, 11), 5)
