"""ResNet-50: torchvision's architecture, initialisers and weights, checked against torchvision.

The torchvision comparisons skip when torchvision does not import; everything else runs on numpy
state dicts written here with torchvision's key names and shapes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models
from iab_jax.models import resnet
from tests.models import harness
from tests.models.harness import (assert_close, assert_leaves_equal, assert_trees_close,
                                  batch_norm_shapes, bottleneck_shapes, flat, num_params,
                                  numpy_state, random_state_dict, randomise_batch_norms,
                                  torch_forward, training)

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)  # the same code paths at a fraction of the cost


def torchvision_state(stage_sizes=(3, 4, 6, 3), width=64, num_classes=1000, seed=0):
  """A random state dict with torchvision's resnet key names and shapes, written out by hand.

  Deliberately not derived from resnet.py's own key table, so a naming slip there shows up here.
  """
  shapes = {"conv1.weight": (width, 3, 7, 7), "bn1.num_batches_tracked": ()}
  shapes.update(batch_norm_shapes("bn1", width))
  stages, channels = bottleneck_shapes("", stage_sizes, width)
  shapes.update(stages)
  shapes["fc.weight"] = (num_classes, channels)
  shapes["fc.bias"] = (num_classes,)
  return random_state_dict(shapes, seed)


# Eager: its ops compile once per shape and every ResNet configuration here shares them.
init = functools.partial(harness.init, hw=(32, 32))


@pytest.fixture(scope="module")
def resnet50():
  model = resnet.Model(num_classes=1000)
  return model, init(model)


# ---------------------------------------------------------------------------------------------
# Architecture.


def test_registry_finds_resnet():
  assert models.get("resnet") is resnet
  with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*resnet"):
    models.get("resnet51")


def test_parameter_count_is_torchvisions(resnet50):
  _, variables = resnet50
  # torchvision's documented figure for resnet50: 25,557,032 (running statistics not counted).
  assert num_params(variables["params"]) == 25_557_032
  assert set(variables) == {"params", "batch_stats"}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_parameter_names_mirror_torchvision(resnet50):
  _, variables = resnet50
  params = variables["params"]
  assert sorted(k for k in params if not k.startswith("layer")) == ["bn1", "conv1", "fc"]
  assert sum(k.startswith("layer3_") for k in params) == 6
  assert set(params["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                     "downsample_conv", "downsample_bn"}
  assert "downsample_conv" not in params["layer1_1"]
  assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert params["fc"]["kernel"].shape == (2048, 1000)


def test_initialisers_are_torchvisions(resnet50):
  _, variables = resnet50
  params = variables["params"]
  # kaiming_normal_(fan_out, relu): std sqrt(2 / (out * kh * kw)), untruncated.
  k = np.asarray(params["layer3_0"]["conv2"]["kernel"])
  assert k.std() == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)
  assert np.abs(k).max() > 3.5 * k.std()  # a truncated normal would stop at 2 std
  # nn.Linear: uniform(+-1/sqrt(fan_in)) for weight and bias.
  bound = 1 / np.sqrt(2048)
  for name in ("kernel", "bias"):
    w = np.asarray(params["fc"][name])
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
  np.testing.assert_array_equal(params["layer1_0"]["bn3"]["scale"], 1)
  np.testing.assert_array_equal(params["bn1"]["bias"], 0)
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], 1)


def test_zero_init_residual():
  variables = init(resnet.Model(num_classes=3, zero_init_residual=True, **TINY))
  for i in range(1, 5):
    np.testing.assert_array_equal(variables["params"][f"layer{i}_0"]["bn3"]["scale"], 0)
    np.testing.assert_array_equal(variables["params"][f"layer{i}_0"]["bn2"]["scale"], 1)


def test_outputs_and_aux(resnet50):
  model, variables = resnet50
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  logits, aux = model.apply(variables, x, train=False)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert aux["features"].shape == (2, 2048) and aux["features"].dtype == jnp.float32
  assert [s.shape for s in aux["stages"]] == [
      (2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 1024), (2, 2, 2, 2048)]
  np.testing.assert_allclose(aux["features"], aux["stages"][-1].mean(axis=(1, 2)), rtol=1e-6)
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("hw", [(97, 131), (1, 1), (33, 2)])
def test_odd_sizes_follow_torch_arithmetic(hw):
  model = resnet.Model(num_classes=3, **TINY)
  _, aux = model.apply(init(model), jnp.zeros((1, *hw, 3)), train=False)

  def out(n, k, s, p):
    return (n + 2 * p - k) // s + 1

  h, w = (out(out(n, 7, 2, 3), 3, 2, 1) for n in hw)  # conv1, maxpool
  for i, stage in enumerate(aux["stages"]):
    if i > 0:
      h, w = out(h, 3, 2, 1), out(w, 3, 2, 1)
    assert stage.shape[1:3] == (h, w)


def test_bfloat16_compute(resnet50):
  model, variables = resnet50
  x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  ref, _ = model.apply(variables, x, train=False)
  bf16 = resnet.Model(num_classes=1000, dtype=jnp.bfloat16)
  logits, aux = bf16.apply(variables, x, train=False)
  assert logits.dtype == jnp.float32 and aux["features"].dtype == jnp.float32
  assert aux["stages"][0].dtype == jnp.bfloat16
  # Same params (float32) and a result close to float32's: bf16 keeps ~3 significant digits.
  assert float(jnp.abs(logits - ref).max()) < 0.1 * float(jnp.abs(ref).max())
  (_, _), updates = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(updates))


def test_train_mode_updates_batch_stats(resnet50):
  model, variables = resnet50
  x = 1.0 + 2.0 * jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
  (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 1000)
  assert set(updates) == {"batch_stats"}
  old, new = variables["batch_stats"], updates["batch_stats"]
  assert jax.tree.structure(old) == jax.tree.structure(new)
  for leaf_old, leaf_new in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    assert not np.allclose(leaf_old, leaf_new)
  # bn1 normalises conv1's output; torch's update: 0.9 * old + 0.1 * batch statistic, the variance
  # unbiased.
  conv1 = jax.lax.conv_general_dilated(
      x, variables["params"]["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mean, var = conv1.mean(axis=(0, 1, 2)), conv1.var(axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(new["bn1"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["bn1"]["var"], 0.9 + 0.1 * var, rtol=1e-4)
  # Eval mode leaves the statistics alone and depends on them, not on the batch.
  a, _ = model.apply(variables, x[:1], train=False)
  b, _ = model.apply(variables, x, train=False)
  np.testing.assert_allclose(a, b[:1], rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


# ---------------------------------------------------------------------------------------------
# torchvision state dicts.


def test_from_torchvision_maps_and_transposes():
  state = torchvision_state(**TINY, num_classes=10)
  variables = resnet.from_torchvision(state, stage_sizes=TINY["stage_sizes"])
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer2_0"]["conv2"]["kernel"][1, 2, 3, 4],
                                state["layer2.0.conv2.weight"][4, 3, 1, 2])
  np.testing.assert_array_equal(params["layer3_0"]["downsample_conv"]["kernel"],
                                state["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer3_0"]["downsample_bn"]["scale"],
                                state["layer3.0.downsample.1.weight"])
  np.testing.assert_array_equal(stats["layer4_0"]["bn3"]["var"], state["layer4.0.bn3.running_var"])
  np.testing.assert_array_equal(stats["bn1"]["mean"], state["bn1.running_mean"])
  np.testing.assert_array_equal(params["bn1"]["bias"], state["bn1.bias"])
  np.testing.assert_array_equal(params["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(params["fc"]["bias"], state["fc.bias"])
  # Every tensor but num_batches_tracked lands somewhere, exactly once.
  n_tensors = sum(not k.endswith("num_batches_tracked") for k in state)
  assert len(jax.tree.leaves(variables)) == n_tensors


def test_from_torchvision_matches_the_models_tree(resnet50):
  _, variables = resnet50
  converted = resnet.from_torchvision(torchvision_state())
  assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, variables)


def test_from_torchvision_reports_missing_and_unexpected_keys():
  state = torchvision_state()
  del state["layer1.0.conv1.weight"]
  state["layer1.0.conv1.bias"] = np.zeros(64, np.float32)
  with pytest.raises(ValueError) as e:
    resnet.from_torchvision(state)
  msg = str(e.value)
  assert "missing keys (1): layer1.0.conv1.weight" in msg
  assert "unexpected keys (1): layer1.0.conv1.bias" in msg
  # A ResNet-101 state dict is not a ResNet-50 one: its extra layer3 blocks are unexpected.
  with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): layer3\.10\.bn1\.bias"):
    resnet.from_torchvision(torchvision_state(stage_sizes=(3, 4, 23, 3)))
  assert "layer3_22" in resnet.from_torchvision(
      torchvision_state(stage_sizes=(3, 4, 23, 3)), stage_sizes=(3, 4, 23, 3))["params"]


def test_from_torchvision_rejects_wrong_ranks_and_classes():
  state = torchvision_state(**TINY)
  state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"][:, :, 0, 0]
  with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight: expected a 4-d conv"):
    resnet.from_torchvision(state, stage_sizes=TINY["stage_sizes"])
  with pytest.raises(ValueError, match="fc.weight has 1000 classes, expected num_classes=7"):
    resnet.from_torchvision(torchvision_state(**TINY), stage_sizes=(1, 1, 1, 1), num_classes=7)


def test_load_pretrained_same_head(tmp_path):
  path = tmp_path / "model.safetensors"
  state = torchvision_state(**TINY, num_classes=10)
  save_file(state, str(path))
  model = resnet.Model(num_classes=10, **TINY)
  fresh = init(model)
  loaded = resnet.load_pretrained(fresh, path)
  expected = resnet.from_torchvision(state, stage_sizes=TINY["stage_sizes"])
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  assert_leaves_equal(loaded, expected)
  # Abstract targets (jax.eval_shape, no init) load the same.
  abstract = jax.eval_shape(lambda: init(model))
  assert_leaves_equal(resnet.load_pretrained(abstract, str(path)), expected)


def test_load_pretrained_keeps_a_fresh_head_of_another_size(tmp_path):
  path = tmp_path / "imagenet.safetensors"
  state = torchvision_state(**TINY, num_classes=1000)
  save_file(state, str(path))
  fresh = init(resnet.Model(num_classes=7, **TINY))
  loaded = resnet.load_pretrained(fresh, path)
  expected = flat(resnet.from_torchvision(state, stage_sizes=TINY["stage_sizes"]))
  for key, value in flat(loaded).items():
    if key[:2] == ("params", "fc"):
      np.testing.assert_array_equal(value, flat(fresh)[key])
      assert value.shape[-1] == 7
    else:
      np.testing.assert_array_equal(value, expected[key], err_msg=str(key))


def test_load_pretrained_shape_mismatch_names_key_and_shapes(tmp_path):
  path = tmp_path / "bad.safetensors"
  state = torchvision_state(**TINY)
  state["layer2.0.conv2.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  save_file(state, str(path))
  fresh = init(resnet.Model(num_classes=1000, **TINY))
  with pytest.raises(ValueError, match=r"layer2\.0\.conv2\.weight -> params/layer2_0/conv2/kernel: "
                                       r"file \(1, 1, 16, 16\).*model \(3, 3, 16, 16\)"):
    resnet.load_pretrained(fresh, path)
  # A file of another depth is reported by key, not by shape.
  save_file(torchvision_state(stage_sizes=(1, 2, 1, 1), width=8), str(path))
  with pytest.raises(ValueError, match=r"unexpected keys .*layer2\.1\.conv1\.weight"):
    resnet.load_pretrained(fresh, path)


def test_load_pretrained_missing_file(tmp_path):
  path = tmp_path / "nowhere" / "model.safetensors"
  fresh = jax.eval_shape(lambda: init(resnet.Model(num_classes=3, **TINY)))
  with pytest.raises(FileNotFoundError, match=r"nowhere/model\.safetensors.*torchvision-layout "
                                              r"ResNet-50 safetensors.*resnet50\.tv_in1k"):
    resnet.load_pretrained(fresh, path)


# ---------------------------------------------------------------------------------------------
# Parity with torchvision itself.


@pytest.fixture(scope="module")
def torch_pair(resnet50, tmp_path_factory):
  """torchvision's resnet50 with random weights and BN statistics, and our Model loaded from it."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip(
      "torchvision", reason="torchvision is needed for the parity tests against torchvision")
  torch.manual_seed(0)
  net = randomise_batch_norms(torchvision.models.resnet50(weights=None), (4, 3, 96, 96))
  state = numpy_state(net)
  path = tmp_path_factory.mktemp("torchvision") / "resnet50.safetensors"
  save_file(state, str(path))
  model, fresh = resnet50
  return net, state, model, resnet.load_pretrained(fresh, path)


def test_torchvision_state_helper_matches_torchvision(torch_pair):
  _, state, _, _ = torch_pair
  mine = torchvision_state()
  assert {k: np.shape(v) for k, v in mine.items()} == {k: v.shape for k, v in state.items()}


@pytest.mark.parametrize("hw", [(224, 224), (97, 131)])
def test_eval_parity_with_torchvision(torch_pair, hw):
  net, _, model, variables = torch_pair
  net.eval()
  x = np.random.default_rng(hw[0]).standard_normal((2, *hw, 3)).astype(np.float32)
  ref_logits, ref = torch_forward(net, x, {"avgpool": net.avgpool})
  logits, aux = model.apply(variables, jnp.asarray(x), train=False)
  assert_close(logits, ref_logits, 1e-4)
  assert_close(aux["features"], ref["avgpool"].reshape(2, -1), 1e-4)


def test_train_parity_with_torchvision(torch_pair):
  net, state, model, variables = torch_pair
  x = np.random.default_rng(5).standard_normal((2, 96, 96, 3)).astype(np.float32)
  with training(net, state):  # then back to the loaded state for the other tests
    ref_logits, _ = torch_forward(net, x)
    ref_state = numpy_state(net)
  (logits, _), updates = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  # Batch statistics over 2 x 3 x 3 positions in layer4 amplify rounding more than eval mode does.
  assert_close(logits, ref_logits, 2e-4)
  # torch updates the running variance with the unbiased batch variance; so must we.
  assert_trees_close(updates["batch_stats"], resnet.from_torchvision(ref_state)["batch_stats"],
                     1e-4)
