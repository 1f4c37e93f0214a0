"""Xception: timm's legacy_xception layout, truncation and weights, checked against timm.

The timm comparisons skip when timm does not import; everything else runs on numpy state dicts
written here with timm's key names and shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models
from iab_jax.models import xception
from tests.models.harness import (abstract, assert_close, assert_each_close, assert_leaves_equal,
                                  assert_trees_close, batch_norm_shapes, init, jit_apply,
                                  num_params, numpy_state, random_state_dict,
                                  randomise_batch_norms, torch_forward, training)

FULL_PARAMS = 22_855_952  # timm's legacy_xception, num_classes=1000 (running statistics excluded)


def timm_state(num_classes=1000, seed=0, pointwise_2d=False):
  """A random state dict with timm's legacy_xception key names and shapes, written out by hand.

  Deliberately not derived from xception.py's own key table, so a naming slip there shows up here.
  """
  shapes = {}

  def bn(prefix, c):
    shapes.update(batch_norm_shapes(prefix, c))

  def sep(prefix, c_in, c_out):
    shapes[f"{prefix}.conv1.weight"] = (c_in, 1, 3, 3)
    shapes[f"{prefix}.pointwise.weight"] = (c_out, c_in) if pointwise_2d else (c_out, c_in, 1, 1)

  def skip(block, c_in, c_out):
    shapes[f"{block}.skip.weight"] = (c_out, c_in, 1, 1)
    bn(f"{block}.skipbn", c_out)

  shapes["conv1.weight"] = (32, 3, 3, 3)
  bn("bn1", 32)
  shapes["conv2.weight"] = (64, 32, 3, 3)
  bn("bn2", 64)
  # block1 has no leading ReLU, so its separable convs sit at rep.0 and rep.3.
  sep("block1.rep.0", 64, 128)
  bn("block1.rep.1", 128)
  sep("block1.rep.3", 128, 128)
  bn("block1.rep.4", 128)
  skip("block1", 64, 128)
  for block, c_in, c_out in (("block2", 128, 256), ("block3", 256, 728)):
    sep(f"{block}.rep.1", c_in, c_out)
    bn(f"{block}.rep.2", c_out)
    sep(f"{block}.rep.4", c_out, c_out)
    bn(f"{block}.rep.5", c_out)
    skip(block, c_in, c_out)
  for n in range(4, 12):
    for r in (1, 4, 7):
      sep(f"block{n}.rep.{r}", 728, 728)
      bn(f"block{n}.rep.{r + 1}", 728)
  # block12 widens on its last separable conv.
  sep("block12.rep.1", 728, 728)
  bn("block12.rep.2", 728)
  sep("block12.rep.4", 728, 1024)
  bn("block12.rep.5", 1024)
  skip("block12", 728, 1024)
  sep("conv3", 1024, 1536)
  bn("bn3", 1536)
  sep("conv4", 1536, 2048)
  bn("bn4", 2048)
  if num_classes:
    shapes["fc.weight"] = (num_classes, 2048)
    shapes["fc.bias"] = (num_classes,)
  return random_state_dict(shapes, seed)


@pytest.fixture(scope="module")
def block2():
  """PatchForensics' backbone: the network up to block 2, freshly initialised."""
  model = xception.Model(num_classes=0, truncate_after="block2")
  return model, init(model, jit=True)


@pytest.fixture(scope="module")
def state_file(tmp_path_factory):
  """The hand-written full state dict (1000 classes) in a safetensors file."""
  state = timm_state()
  path = tmp_path_factory.mktemp("xception") / "model.safetensors"
  save_file(state, str(path))
  return state, path


# ---------------------------------------------------------------------------------------------
# Architecture.


def test_registry_finds_xception():
  assert models.get("xception") is xception


def test_parameter_count_and_names_are_timms():
  variables = abstract(xception.Model(num_classes=1000))
  params = variables["params"]
  assert num_params(params) == FULL_PARAMS
  assert set(variables) == {"params", "batch_stats"}
  assert set(params) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "fc",
                         *(f"block{i}" for i in range(1, 13))}
  assert set(params["block1"]) == {"sep1", "bn1", "sep2", "bn2", "skip", "skipbn"}
  assert set(params["block5"]) == {"sep1", "bn1", "sep2", "bn2", "sep3", "bn3"}
  assert params["block2"]["sep1"]["depthwise"]["kernel"].shape == (3, 3, 1, 128)
  assert params["block2"]["sep1"]["pointwise"]["kernel"].shape == (1, 1, 128, 256)
  # block12 widens on its last separable conv, the others on their first.
  assert params["block12"]["sep1"]["pointwise"]["kernel"].shape == (1, 1, 728, 728)
  assert params["block12"]["sep2"]["pointwise"]["kernel"].shape == (1, 1, 728, 1024)
  assert params["fc"]["kernel"].shape == (2048, 1000)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  no_head = abstract(xception.Model(num_classes=0))["params"]
  assert "fc" not in no_head
  assert num_params(no_head) == FULL_PARAMS - 2048 * 1000 - 1000


def test_truncated_model_builds_only_the_blocks_it_runs(block2):
  model, variables = block2
  assert set(variables["params"]) == {"conv1", "bn1", "conv2", "bn2", "block1", "block2"}
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  out, aux = jit_apply(model, variables, x, train=False)
  # 64 -> 31 (conv1, stride 2, unpadded) -> 29 (conv2) -> 15 (block1) -> 8 (block2).
  assert out.shape == (2, 8, 8, 256) and out.dtype == jnp.float32
  assert [s.shape for s in aux["stages"]] == [(2, 15, 15, 128), (2, 8, 8, 256)]
  np.testing.assert_array_equal(aux["feature_map"], out)
  np.testing.assert_allclose(aux["features"], out.mean(axis=(1, 2)), rtol=1e-6)
  # The output is the residual sum itself: the ReLU after it belongs to block3.
  assert float(out.min()) < 0


def test_truncation_errors():
  x = jnp.zeros((1, 64, 64, 3))
  with pytest.raises(ValueError, match=r"truncate_after='layer2' is not a block.*block1, block2"):
    init(xception.Model(num_classes=0, truncate_after="layer2"), jit=True)
  with pytest.raises(ValueError, match=r"truncated after block2 has no classification head"):
    xception.Model(num_classes=2, truncate_after="block2").init(jax.random.key(0), x, train=False)


def test_initialisers_are_timms(block2):
  params = block2[1]["params"]
  # kaiming_normal_(fan_out, relu) everywhere, depthwise convs included: fan_out = 9 * channels.
  k = np.asarray(params["block2"]["sep2"]["depthwise"]["kernel"])
  assert k.std() == pytest.approx(np.sqrt(2 / (9 * 256)), rel=0.05)
  k = np.asarray(params["block2"]["sep2"]["pointwise"]["kernel"])
  assert k.std() == pytest.approx(np.sqrt(2 / 256), rel=0.05)
  np.testing.assert_array_equal(params["block1"]["bn2"]["scale"], 1)
  np.testing.assert_array_equal(params["bn1"]["bias"], 0)


def test_full_model_outputs_and_aux():
  model = xception.Model(num_classes=1000)
  logits, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), abstract(model),
                               jax.ShapeDtypeStruct((2, 96, 96, 3), jnp.float32))
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert aux["features"].shape == (2, 2048) and aux["features"].dtype == jnp.float32
  # 96 -> 47 (conv1) -> 45 (conv2) -> 23 -> 12 -> 6 (blocks 1-3) ... -> 3 (block12).
  assert [s.shape[1] for s in aux["stages"]] == [23, 12, 6] + [6] * 8 + [3]
  assert aux["stages"][-1].shape == (2, 3, 3, 1024)
  assert aux["feature_map"].shape == aux["feature_map_preact"].shape == (2, 3, 3, 2048)
  features, _ = jax.eval_shape(
      lambda v, x: xception.Model(num_classes=0).apply(v, x, train=False),
      abstract(xception.Model(num_classes=0)), jax.ShapeDtypeStruct((2, 96, 96, 3), jnp.float32))
  assert features.shape == (2, 2048)


def test_bfloat16_compute(block2):
  model, variables = block2
  x = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
  ref, _ = jit_apply(model, variables, x, train=False)
  bf16 = xception.Model(num_classes=0, truncate_after="block2", dtype=jnp.bfloat16)
  out, aux = jit_apply(bf16, variables, x, train=False)
  assert out.dtype == jnp.float32 and aux["stages"][0].dtype == jnp.bfloat16
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


def test_train_mode_updates_batch_stats(block2):
  model, variables = block2
  x = 1.0 + jax.random.normal(jax.random.key(4), (2, 48, 48, 3))
  (_, _), updates = jit_apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
      variables["batch_stats"])
  for old, new in zip(jax.tree.leaves(variables["batch_stats"]),
                      jax.tree.leaves(updates["batch_stats"])):
    assert not np.allclose(old, new)


# ---------------------------------------------------------------------------------------------
# timm state dicts.


def test_from_timm_maps_and_transposes():
  state = timm_state(num_classes=10)
  variables = xception.from_timm(state)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv1"]["kernel"],
                                state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["block1"]["sep2"]["depthwise"]["kernel"][1, 2, 0, 5],
                                state["block1.rep.3.conv1.weight"][5, 0, 1, 2])
  np.testing.assert_array_equal(params["block7"]["sep3"]["pointwise"]["kernel"][0, 0, 3, 4],
                                state["block7.rep.7.pointwise.weight"][4, 3, 0, 0])
  np.testing.assert_array_equal(params["block12"]["bn2"]["scale"], state["block12.rep.5.weight"])
  np.testing.assert_array_equal(stats["block3"]["skipbn"]["var"],
                                state["block3.skipbn.running_var"])
  np.testing.assert_array_equal(params["conv4"]["depthwise"]["kernel"],
                                state["conv4.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], state["fc.weight"].T)
  n_tensors = sum(not k.endswith("num_batches_tracked") for k in state)
  assert len(jax.tree.leaves(variables)) == n_tensors


def test_from_timm_matches_the_models_tree():
  converted = xception.from_timm(timm_state())
  target = abstract(xception.Model(num_classes=1000))
  assert jax.tree.map(np.shape, converted) == jax.tree.map(lambda s: s.shape, target)


def test_from_timm_truncates_and_drops_the_head():
  state = timm_state()
  cut = xception.from_timm(state, truncate_after="block2")
  target = abstract(xception.Model(num_classes=0, truncate_after="block2"))
  assert jax.tree.map(np.shape, cut) == jax.tree.map(lambda s: s.shape, target)
  assert "fc" not in xception.from_timm(state, num_classes=0)["params"]
  # A feature-extractor state dict (timm's num_classes=0) has no fc and loads headless.
  headless = xception.from_timm(timm_state(num_classes=0))
  assert "fc" not in headless["params"] and "conv4" in headless["params"]


def test_from_timm_takes_2d_pointwise_weights():
  # FaceForensics / DeepfakeBench copies of Cadene's weights store pointwise convs as matrices.
  assert_leaves_equal(xception.from_timm(timm_state(pointwise_2d=True)),
                      xception.from_timm(timm_state()))


def test_from_timm_reports_keys_shapes_and_classes():
  state = timm_state()
  del state["block4.rep.4.pointwise.weight"]
  state["block4.rep.4.pointwise.bias"] = np.zeros(728, np.float32)
  with pytest.raises(ValueError) as e:
    xception.from_timm(state)
  assert "missing keys block4.rep.4.pointwise.weight" in str(e.value)
  assert "unexpected keys block4.rep.4.pointwise.bias" in str(e.value)
  state = timm_state()
  state["block2.rep.4.conv1.weight"] = np.zeros((256, 1, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"block2\.rep\.4\.conv1\.weight: expected shape "
                                       r"\(256, 1, 3, 3\).*got \(256, 1, 5, 5\)"):
    xception.from_timm(state)
  with pytest.raises(ValueError, match="fc over 1000 classes, expected num_classes=7"):
    xception.from_timm(timm_state(), num_classes=7)
  with pytest.raises(ValueError, match="truncated after block2 has no head"):
    xception.from_timm(timm_state(), truncate_after="block2", num_classes=2)
  with pytest.raises(ValueError, match="truncate_after='block13'"):
    xception.from_timm(timm_state(), truncate_after="block13")


def test_load_pretrained_same_head(state_file):
  state, path = state_file
  model = xception.Model(num_classes=1000)
  loaded = xception.load_pretrained(abstract(model), path)
  expected = xception.from_timm(state)
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  assert_leaves_equal(loaded, expected)


def test_load_pretrained_keeps_a_fresh_head_of_another_size(state_file):
  state, path = state_file
  fresh = abstract(xception.Model(num_classes=7))
  fresh["params"]["fc"] = {"kernel": jnp.full((2048, 7), 0.5), "bias": jnp.zeros(7)}
  loaded = xception.load_pretrained(fresh, str(path))
  np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], 0.5)
  np.testing.assert_array_equal(loaded["params"]["conv3"]["pointwise"]["kernel"],
                                state["conv3.pointwise.weight"].transpose(2, 3, 1, 0))


def test_load_pretrained_into_truncated_model(state_file, block2):
  state, path = state_file
  _, fresh = block2
  loaded = xception.load_pretrained(fresh, path)
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  np.testing.assert_array_equal(loaded["batch_stats"]["block2"]["bn2"]["mean"],
                                state["block2.rep.5.running_mean"])


def test_load_pretrained_shape_mismatch_and_missing_file(tmp_path):
  path = tmp_path / "bad.safetensors"
  state = timm_state()
  state["bn3.weight"] = np.ones(7, np.float32)
  save_file(state, str(path))
  with pytest.raises(ValueError, match=r"bn3\.weight: expected shape \(1536,\)"):
    xception.load_pretrained(abstract(xception.Model(num_classes=1000)), path)
  with pytest.raises(FileNotFoundError, match=r"nowhere/model\.safetensors.*legacy_xception.*"
                                              r"timm/legacy_xception\.tf_in1k"):
    xception.load_pretrained(abstract(xception.Model(num_classes=0, truncate_after="block1")),
                             tmp_path / "nowhere" / "model.safetensors")


def test_checkpoints_entry():
  entry = xception.CHECKPOINTS["legacy_xception.tf_in1k"]
  assert entry["source"] == "timm/legacy_xception.tf_in1k"
  from iab_jax.data import transforms
  assert transforms.parse(entry["preprocess"]).spec == entry["preprocess"]
  xception.Model(num_classes=1000, **entry["arch"])


# ---------------------------------------------------------------------------------------------
# Parity with timm itself.


@pytest.fixture(scope="module")
def torch_pair(tmp_path_factory):
  """timm's legacy_xception with random weights and BN statistics, and our Model loaded from it."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm", reason="timm is needed for the parity tests against timm")
  torch.manual_seed(0)
  net = randomise_batch_norms(timm.create_model("legacy_xception", pretrained=False),
                              (4, 3, 96, 96))
  state = numpy_state(net)
  path = tmp_path_factory.mktemp("timm_xception") / "legacy_xception.safetensors"
  save_file(state, str(path))
  model = xception.Model(num_classes=1000)
  variables = xception.load_pretrained(abstract(model), path)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return net, state, path, variables, apply


def _taps(net, names):
  """timm's submodules by name, for torch_forward (act4, in place, overwrites bn4's output after
  the hook has copied it)."""
  return {name: net.get_submodule(name) for name in names}


def test_state_helper_matches_timm(torch_pair):
  _, state, *_ = torch_pair
  assert {k: np.shape(v) for k, v in timm_state().items()} == {
      k: v.shape for k, v in state.items()}


def test_eval_parity_with_timm(torch_pair):
  net, _, _, variables, apply = torch_pair
  x = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
  blocks = [f"block{i}" for i in range(1, 13)]
  ref_logits, ref = torch_forward(net, x, _taps(net, blocks + ["bn4", "global_pool"]))
  logits, aux = apply(variables, jnp.asarray(x))
  assert_close(logits, ref_logits, 1e-4)
  assert_close(aux["features"], ref["global_pool"].reshape(2, -1), 1e-4)
  assert_close(aux["feature_map_preact"], ref["bn4"], 1e-4)
  assert_each_close(aux["stages"], [ref[name] for name in blocks], 1e-4)
  np.testing.assert_allclose(aux["feature_map"], jax.nn.relu(aux["feature_map_preact"]))


def test_truncated_parity_with_timm(torch_pair):
  net, _, path, _, _ = torch_pair
  model = xception.Model(num_classes=0, truncate_after="block2")
  variables = xception.load_pretrained(abstract(model), path)
  # Odd sizes: the unpadded stem and the padded stride-2 pools round as torch's do.
  x = np.random.default_rng(7).standard_normal((2, 81, 67, 3)).astype(np.float32)
  _, ref = torch_forward(net, x, _taps(net, ["block1", "block2"]))
  out, aux = jit_apply(model, variables, jnp.asarray(x), train=False)
  assert_close(out, ref["block2"], 1e-4)
  assert_close(aux["stages"][0], ref["block1"], 1e-4)


def test_train_parity_with_timm(torch_pair):
  """Batch statistics and torch's running-average update, on the layers up to block2."""
  net, state, path, _, _ = torch_pair
  model = xception.Model(num_classes=0, truncate_after="block2")
  variables = xception.load_pretrained(abstract(model), path)
  x = np.random.default_rng(8).standard_normal((2, 80, 80, 3)).astype(np.float32)
  with training(net, state):
    _, ref = torch_forward(net, x, _taps(net, ["block2"]))
    ref_state = numpy_state(net)
  (out, _), updates = jit_apply(model, variables, jnp.asarray(x), train=True,
                                mutable=["batch_stats"])
  assert_close(out, ref["block2"], 1e-4)
  ref_stats = xception.from_timm(ref_state, truncate_after="block2")["batch_stats"]
  assert_trees_close(updates["batch_stats"], ref_stats, 1e-4)
