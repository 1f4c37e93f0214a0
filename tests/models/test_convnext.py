"""ConvNeXt: timm's architecture (convnext_small by default), stochastic depth and weights.

Numerical parity uses timm's ConvNeXt class at a reduced depth and width (the same code paths);
the full convnext_small is only shaped (jax.eval_shape). The timm comparisons skip when timm does
not import; everything else runs on numpy state dicts written here with timm's key names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models
from iab_jax.models import convnext
from tests.models.harness import (abstract, assert_close, assert_each_close, assert_leaves_equal,
                                  init, jit_apply, nchw, num_params, numpy_state,
                                  random_state_dict)

TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
SMALL_PARAMS = 50_223_688  # timm's convnext_small with the 1000-class head


def timm_state(depths=TINY["depths"], dims=TINY["dims"], num_classes=10, seed=0):
  """A random state dict with timm's ConvNeXt key names and shapes, written out by hand.

  Deliberately not derived from convnext.py's own key table, so a naming slip there shows up here.
  """
  shapes = {"stem.0.weight": (dims[0], 3, 4, 4), "stem.0.bias": (dims[0],),
            "stem.1.weight": (dims[0],), "stem.1.bias": (dims[0],)}
  for i, (depth, dim) in enumerate(zip(depths, dims)):
    if i:
      shapes[f"stages.{i}.downsample.0.weight"] = (dims[i - 1],)
      shapes[f"stages.{i}.downsample.0.bias"] = (dims[i - 1],)
      shapes[f"stages.{i}.downsample.1.weight"] = (dim, dims[i - 1], 2, 2)
      shapes[f"stages.{i}.downsample.1.bias"] = (dim,)
    for j in range(depth):
      p = f"stages.{i}.blocks.{j}"
      shapes.update({
          f"{p}.gamma": (dim,),
          f"{p}.conv_dw.weight": (dim, 1, 7, 7), f"{p}.conv_dw.bias": (dim,),
          f"{p}.norm.weight": (dim,), f"{p}.norm.bias": (dim,),
          f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
          f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,),
      })
  shapes["head.norm.weight"] = shapes["head.norm.bias"] = (dims[-1],)
  if num_classes:
    shapes["head.fc.weight"] = (num_classes, dims[-1])
    shapes["head.fc.bias"] = (num_classes,)
  return random_state_dict(shapes, seed)


@pytest.fixture(scope="module")
def tiny():
  model = convnext.Model(num_classes=10, **TINY)
  return model, init(model, jit=True)


# ---------------------------------------------------------------------------------------------
# Architecture.


def test_registry_finds_convnext():
  assert models.get("convnext") is convnext


def test_parameter_count_and_names_are_timms():
  variables = abstract(convnext.Model(num_classes=1000))
  assert set(variables) == {"params"}
  params = variables["params"]
  assert num_params(params) == SMALL_PARAMS
  assert sum(k.startswith("stage2_block") for k in params) == 27
  assert sorted(k for k in params if "block" not in k) == [
      "head_fc", "head_norm", "stage1_downsample_conv", "stage1_downsample_norm",
      "stage2_downsample_conv", "stage2_downsample_norm", "stage3_downsample_conv",
      "stage3_downsample_norm", "stem_conv", "stem_norm"]
  block = params["stage1_block0"]
  assert set(block) == {"conv_dw", "norm", "fc1", "fc2", "gamma"}
  assert block["conv_dw"]["kernel"].shape == (7, 7, 1, 192)
  assert block["fc1"]["kernel"].shape == (192, 768)
  assert params["stage3_downsample_conv"]["kernel"].shape == (2, 2, 384, 768)
  assert params["head_fc"]["kernel"].shape == (768, 1000)
  headless = abstract(convnext.Model(num_classes=0))["params"]
  assert "head_fc" not in headless and "head_norm" in headless


def test_initialisers_are_timms(tiny):
  params = tiny[1]["params"]
  np.testing.assert_array_equal(params["stage0_block0"]["gamma"], np.float32(1e-6))
  np.testing.assert_array_equal(params["stem_norm"]["scale"], 1)
  np.testing.assert_array_equal(params["stage2_block1"]["fc1"]["bias"], 0)
  k = np.asarray(params["stage3_block0"]["fc1"]["kernel"])
  assert k.std() == pytest.approx(0.02, rel=0.1)
  assert np.abs(k).max() > 2.5 * 0.02  # timm's trunc_normal_ cuts at +-2, i.e. 100 std


def test_outputs_and_aux(tiny):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  logits, aux = jit_apply(model, variables, x, train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert aux["features"].shape == (2, 32) and aux["features"].dtype == jnp.float32
  assert [s.shape for s in aux["stages"]] == [
      (2, 16, 16, 8), (2, 8, 8, 16), (2, 4, 4, 24), (2, 2, 2, 32)]
  # features = head_norm(mean of the last stage): zero mean, unit variance before the affine.
  pooled = aux["stages"][-1].mean(axis=(1, 2))
  normed = (pooled - pooled.mean(-1, keepdims=True)) / jnp.sqrt(
      pooled.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(aux["features"], normed, rtol=1e-4, atol=1e-5)
  features, _ = jit_apply(convnext.Model(num_classes=0, **TINY), variables, x, train=False)
  np.testing.assert_allclose(features, aux["features"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(70, 90), (33, 39)])
def test_odd_sizes_floor_like_torch(tiny, hw):
  model, variables = tiny
  _, aux = jit_apply(model, variables, jnp.zeros((1, *hw, 3)), train=False)
  h, w = hw[0] // 4, hw[1] // 4
  for i, stage in enumerate(aux["stages"]):
    if i:
      h, w = h // 2, w // 2
    assert stage.shape[1:3] == (h, w)


def test_bfloat16_compute(tiny):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  ref, _ = jit_apply(model, variables, x, train=False)
  logits, aux = jit_apply(convnext.Model(num_classes=10, dtype=jnp.bfloat16, **TINY),
                          variables, x, train=False)
  assert logits.dtype == jnp.float32 and aux["features"].dtype == jnp.float32
  assert aux["stages"][0].dtype == jnp.bfloat16
  assert float(jnp.abs(logits - ref).max()) < 0.05 * float(jnp.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# Stochastic depth.


def test_drop_path_zeroes_whole_samples_and_rescales():
  x = jnp.ones((4000, 2, 2, 3))
  dp = convnext.DropPath(0.25)
  y = dp.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
  per_sample = np.asarray(y).reshape(4000, -1)
  # Each sample is either dropped whole or kept and scaled by 1 / keep.
  assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
  assert (per_sample == per_sample[:, :1]).all()
  assert (per_sample[:, 0] == 0).mean() == pytest.approx(0.25, abs=0.03)
  np.testing.assert_array_equal(dp.apply({}, x, train=False), x)
  np.testing.assert_array_equal(
      convnext.DropPath(1.0).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}), 0)


def test_drop_path_only_in_training():
  # Layer scales of order 1 from a random state dict: at their 1e-6 init the residual branches,
  # and so dropping them, would not show in the output.
  variables = convnext.from_timm(timm_state(), **TINY)
  model = convnext.Model(num_classes=10, drop_path_rate=0.5, **TINY)
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  ref, _ = jit_apply(convnext.Model(num_classes=10, **TINY), variables, x, train=False)
  # No batch norm: a ConvNeXt without drop path computes the same in both modes.
  same, _ = jit_apply(convnext.Model(num_classes=10, **TINY), variables, x, train=True)
  np.testing.assert_allclose(same, ref, rtol=1e-6, atol=1e-6)
  evaluated, _ = jit_apply(model, variables, x, train=False)
  np.testing.assert_array_equal(evaluated, ref)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, train=True)
  train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
  a, _ = train(variables, x, jax.random.key(1))
  b, _ = train(variables, x, jax.random.key(1))
  c, _ = train(variables, x, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, ref)


# ---------------------------------------------------------------------------------------------
# timm state dicts.


def test_from_timm_maps_and_transposes():
  state = timm_state()
  params = convnext.from_timm(state, **TINY)["params"]
  np.testing.assert_array_equal(params["stem_conv"]["kernel"],
                                state["stem.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["stem_norm"]["scale"], state["stem.1.weight"])
  np.testing.assert_array_equal(params["stage2_downsample_norm"]["bias"],
                                state["stages.2.downsample.0.bias"])
  np.testing.assert_array_equal(params["stage2_downsample_conv"]["kernel"][1, 0, 3, 4],
                                state["stages.2.downsample.1.weight"][4, 3, 1, 0])
  np.testing.assert_array_equal(params["stage2_block1"]["conv_dw"]["kernel"][1, 2, 0, 5],
                                state["stages.2.blocks.1.conv_dw.weight"][5, 0, 1, 2])
  np.testing.assert_array_equal(params["stage2_block1"]["fc1"]["kernel"],
                                state["stages.2.blocks.1.mlp.fc1.weight"].T)
  np.testing.assert_array_equal(params["stage2_block1"]["fc2"]["bias"],
                                state["stages.2.blocks.1.mlp.fc2.bias"])
  np.testing.assert_array_equal(params["stage3_block0"]["gamma"], state["stages.3.blocks.0.gamma"])
  np.testing.assert_array_equal(params["head_norm"]["scale"], state["head.norm.weight"])
  np.testing.assert_array_equal(params["head_fc"]["kernel"], state["head.fc.weight"].T)
  assert len(jax.tree.leaves(params)) == len(state)


def test_from_timm_matches_the_models_tree():
  converted = convnext.from_timm(timm_state((3, 3, 27, 3), (96, 192, 384, 768), 1000))
  target = abstract(convnext.Model(num_classes=1000))
  assert jax.tree.map(np.shape, converted) == jax.tree.map(lambda s: s.shape, target)


def test_from_timm_errors():
  state = timm_state()
  del state["stages.1.blocks.0.gamma"]
  state["stages.1.blocks.0.mlp.fc1.scale"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as e:
    convnext.from_timm(state, **TINY)
  assert "missing keys stages.1.blocks.0.gamma" in str(e.value)
  assert "unexpected keys stages.1.blocks.0.mlp.fc1.scale" in str(e.value)
  # Another depth shows up as keys, another width as shapes.
  with pytest.raises(ValueError, match=r"unexpected keys stages\.2\.blocks\.2\."):
    convnext.from_timm(timm_state(depths=(1, 1, 3, 1)), **TINY)
  with pytest.raises(ValueError, match=r"stem\.0\.weight: expected shape \(8, 3, 4, 4\).*"
                                       r"got \(12, 3, 4, 4\)"):
    convnext.from_timm(timm_state(dims=(12, 16, 24, 32)), **TINY)
  with pytest.raises(ValueError, match="fc over 10 classes, expected num_classes=3"):
    convnext.from_timm(timm_state(), num_classes=3, **TINY)
  assert "head_fc" not in convnext.from_timm(timm_state(), num_classes=0, **TINY)["params"]
  assert "head_fc" not in convnext.from_timm(timm_state(num_classes=0), **TINY)["params"]


def test_load_pretrained_same_head(tmp_path, tiny):
  path = tmp_path / "model.safetensors"
  state = timm_state()
  save_file(state, str(path))
  model, fresh = tiny
  loaded = convnext.load_pretrained(fresh, path)
  expected = convnext.from_timm(state, **TINY)
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  assert_leaves_equal(loaded, expected)
  assert_leaves_equal(convnext.load_pretrained(abstract(model), str(path)), expected)


def test_load_pretrained_fresh_head_and_headless(tmp_path, tiny):
  path = tmp_path / "imagenet.safetensors"
  state = timm_state(num_classes=1000)
  save_file(state, str(path))
  _, fresh = tiny  # a 10-class head
  loaded = convnext.load_pretrained(fresh, path)
  np.testing.assert_array_equal(loaded["params"]["head_fc"]["kernel"],
                                fresh["params"]["head_fc"]["kernel"])
  np.testing.assert_array_equal(loaded["params"]["head_norm"]["scale"], state["head.norm.weight"])
  headless = convnext.load_pretrained(abstract(convnext.Model(num_classes=0, **TINY)), path)
  assert "head_fc" not in headless["params"]
  np.testing.assert_array_equal(headless["params"]["head_norm"]["bias"], state["head.norm.bias"])


def test_load_pretrained_wrong_file_and_missing_file(tmp_path, tiny):
  path = tmp_path / "deeper.safetensors"
  save_file(timm_state(depths=(1, 1, 3, 1)), str(path))
  with pytest.raises(ValueError, match=r"unexpected keys stages\.2\.blocks\.2\."):
    convnext.load_pretrained(tiny[1], path)
  with pytest.raises(FileNotFoundError, match=r"nowhere/model\.safetensors.*timm ConvNeXt.*"
                                              r"timm/convnext_small\.fb_in1k"):
    convnext.load_pretrained(tiny[1], tmp_path / "nowhere" / "model.safetensors")


def test_checkpoints_entries():
  from iab_jax.data import transforms
  assert set(convnext.CHECKPOINTS) == {"convnext_small.fb_in1k",
                                       "convnext_small.fb_in22k_ft_in1k"}
  for name, entry in convnext.CHECKPOINTS.items():
    assert entry["source"] == f"timm/{name}" and entry["filename"] == "model.safetensors"
    assert transforms.parse(entry["preprocess"]).spec == entry["preprocess"]
    convnext.Model(num_classes=1000, **entry["arch"])


# ---------------------------------------------------------------------------------------------
# Parity with timm itself.


@pytest.fixture(scope="module")
def torch_pair(tmp_path_factory):
  """timm's ConvNeXt at TINY size with random weights (layer scale and norms too) and ours."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("timm", reason="timm is needed for the parity tests against timm")
  from timm.models.convnext import ConvNeXt

  torch.manual_seed(0)
  net = ConvNeXt(num_classes=10, **TINY)
  with torch.no_grad():
    for name, p in net.named_parameters():
      # Layer scale of order 1 (its 1e-6 init would hide the blocks) and non-trivial norms.
      if name.endswith("gamma"):
        p.uniform_(0.5, 1.5)
      elif p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
  net.eval()
  state = numpy_state(net)
  path = tmp_path_factory.mktemp("timm_convnext") / "convnext.safetensors"
  save_file(state, str(path))
  model = convnext.Model(num_classes=10, **TINY)
  return torch, net, state, model, convnext.load_pretrained(abstract(model), path)


def test_state_helper_matches_timm(torch_pair):
  _, _, state, _, _ = torch_pair
  assert {k: np.shape(v) for k, v in timm_state().items()} == {
      k: v.shape for k, v in state.items()}


def test_drop_path_schedule_is_timms():
  pytest.importorskip("torch")
  pytest.importorskip("timm", reason="timm is needed to read its drop-path schedule")
  from timm.models.convnext import ConvNeXt

  net = ConvNeXt(drop_path_rate=0.3, **TINY)
  theirs = [[getattr(b.drop_path, "drop_prob", 0.0) for b in stage.blocks]
            for stage in net.stages]
  ours = convnext.drop_path_rates(0.3, TINY["depths"])
  assert [len(r) for r in ours] == list(TINY["depths"])
  np.testing.assert_allclose(np.concatenate(ours), np.concatenate(theirs), atol=1e-7)


def test_eval_parity_with_timm(torch_pair):
  torch, net, _, model, variables = torch_pair
  x = np.random.default_rng(0).standard_normal((2, 70, 90, 3)).astype(np.float32)
  xt = nchw(x)
  with torch.no_grad():
    ref_logits = net(xt).numpy()
    final, ref_stages = net.forward_intermediates(xt)
    ref_features = net.forward_head(final, pre_logits=True).numpy()
  logits, aux = jit_apply(model, variables, jnp.asarray(x), train=False)
  assert_close(logits, ref_logits, 1e-4)
  assert_close(aux["features"], ref_features, 1e-4)
  assert_each_close(aux["stages"], [t.numpy().transpose(0, 2, 3, 1) for t in ref_stages], 1e-4)
