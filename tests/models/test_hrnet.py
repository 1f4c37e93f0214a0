"""HRNet: timm's HighResolutionNet architecture, initialisers and weights, checked against timm.

The comparisons with timm skip when timm does not import; the rest runs on numpy state dicts with
timm's key names and shapes (their agreement with timm's own state dicts is itself a timm test).
Numerical parity uses reduced configurations, built through timm's cfg dict as timm builds its
variants, plus one small-input forward of the full hrnet_w18.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models
from iab_jax.models import hrnet
from tests.models.harness import (abstract, assert_close, assert_each_close, assert_trees_close,
                                  flat, num_params, numpy_state, randomise_batch_norms,
                                  torch_forward, training)

# Every code path of the full network at a fraction of its cost: a bottleneck stage 1, a stage of
# two modules, two blocks on one branch, a width-changing transition on an existing branch and
# chains of 1-3 stride-2 convs. The head is timm's fixed one (~8M parameters) whatever the widths.
TINY = dict(stem_width=16,
            num_blocks=((1,), (1, 2), (1, 1, 1), (1, 1, 1, 1)),
            num_channels=((8,), (4, 8), (4, 12, 16), (4, 12, 16, 32)),
            num_modules=(1, 1, 2, 1))
# The other block types where timm's defaults have the first ones, and no head conv biases.
TINY_ALT = dict(stem_width=8, block_types=("BASIC", "BOTTLENECK", "BASIC", "BASIC"),
                num_blocks=((2,), (1, 1), (1, 1, 1), (1, 1, 1, 1)),
                num_channels=((16,), (2, 4), (8, 16, 24), (8, 16, 24, 32)),
                num_modules=(1, 1, 1, 1), head_conv_bias=False)
W18_PARAMS = 21_299_004  # timm's hrnet_w18 with its 1000-class classifier
W18_SMALL_V2_PARAMS = 15_597_464


def random_state(arch=TINY, num_classes=10, seed=0):
  """A random state dict with timm's key names and shapes for this architecture."""
  model = hrnet.Model(num_classes=num_classes, **arch)
  table = hrnet._timm_keys(model, classifier=num_classes > 0)
  rng = np.random.default_rng(seed)
  state = {}
  for key, (_, _, kind, shape) in table.items():
    shape = tuple(num_classes if n is None else n for n in shape)
    if key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      # Weights of std 1/sqrt(fan_in) keep the activations O(1) through the depth.
      scale = 1 / np.sqrt(np.prod(shape[1:])) if kind in ("conv", "linear") else 1.0
      state[key] = (scale * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("running_mean"):
      state[key.replace("running_mean", "num_batches_tracked")] = np.array(3, np.int64)
  return state


@pytest.fixture(scope="module")
def tiny():
  """The tiny model with random weights in timm's layout: forwards need no (slow) init."""
  return hrnet.Model(num_classes=10, **TINY), hrnet.from_timm(random_state(), **TINY)


# ---------------------------------------------------------------------------------------------
# Architecture.


def test_registry_finds_hrnet():
  assert models.get("hrnet") is hrnet


def test_parameter_counts_are_timms():
  def count(**kw):
    shapes = abstract(hrnet.Model(**kw))
    assert set(shapes) == {"params", "batch_stats"}
    return num_params(shapes["params"])

  # timm's figures (running statistics not counted): hrnet_w18 21.3M, of which the classifier is
  # 2048 * 1000 + 1000; hrnet_w18_small_v2 15.6M.
  assert count(num_classes=1000) == W18_PARAMS
  arch = hrnet.CHECKPOINTS["hrnet_w18_small_v2.ms_in1k"]["arch"]
  assert count(num_classes=1000, **arch) == W18_SMALL_V2_PARAMS


def test_outputs_and_aux(tiny):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  logits, aux = model.apply(variables, x, train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert aux["features"].shape == (2, 2048) and aux["features"].dtype == jnp.float32
  # Strides 4, 8, 16, 32, highest resolution first.
  assert [s.shape for s in aux["stages"]] == [
      (2, 16, 16, 4), (2, 8, 8, 12), (2, 4, 4, 16), (2, 2, 2, 32)]
  assert np.isfinite(np.asarray(logits)).all()
  # num_classes=0: no classifier, the output is the pooled feature (checked against timm's in
  # test_eval_parity_tiny_alt).
  backbone = hrnet.Model(num_classes=0, **TINY)
  assert "classifier" not in abstract(backbone)["params"]
  features, _ = jax.eval_shape(lambda v: backbone.apply(v, x, train=False), variables)
  assert features.shape == (2, 2048)


def test_parameter_names_mirror_timm(tiny):
  model, _ = tiny
  params = abstract(model)["params"]
  assert {"conv1", "bn1", "conv2", "bn2", "layer1_0", "transition1_0", "transition1_1",
          "transition2_1", "transition2_2", "transition3_3", "stage2_0", "stage3_0", "stage3_1",
          "stage4_0", "final_layer", "classifier"} | {
              f"incre_modules_{i}" for i in range(4)} | {
              f"downsamp_modules_{i}" for i in range(3)} == set(params)
  assert set(params["transition1_1"]) == {"step0"}
  assert set(params["stage4_0"]["fuse_layers_3_0"]) == {"step0", "step1", "step2"}
  assert set(params["stage4_0"]["fuse_layers_0_3"]) == {"conv", "bn"}
  assert "fuse_layers_1_1" not in params["stage4_0"]
  assert params["stage2_0"]["branches_1_1"]["conv2"]["kernel"].shape == (3, 3, 8, 8)
  assert params["final_layer"]["conv"]["bias"].shape == (2048,)


def test_initialisers_are_timms(tiny):
  model, _ = tiny
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract(model)))
  # On the building blocks: a whole model's ~300 initialisers take XLA ~10 s to compile on CPU.
  key = jax.random.key(0, impl="rbg")
  down = hrnet.ConvBN(1024, 3, 2, use_bias=True).init(key, jnp.zeros((1, 4, 4, 512)), train=False)
  # kaiming_normal_(fan_out, relu): std sqrt(2 / (out * kh * kw)), untruncated.
  k = np.asarray(down["params"]["conv"]["kernel"])
  assert k.std() == pytest.approx(np.sqrt(2 / (1024 * 9)), rel=0.02)
  assert np.abs(k).max() > 3.5 * k.std()
  head = hrnet.classifier_head(10).init(key, jnp.zeros((1, 2048)))
  # Conv biases and the classifier: torch's uniform(+-1/sqrt(fan_in)).
  for w, fan_in in ((down["params"]["conv"]["bias"], 512 * 9),
                    (head["params"]["kernel"], 2048), (head["params"]["bias"], 2048)):
    bound = 1 / np.sqrt(fan_in)
    assert bound * 0.9 < np.abs(np.asarray(w)).max() <= bound
  np.testing.assert_array_equal(down["params"]["bn"]["scale"], 1)
  np.testing.assert_array_equal(down["params"]["bn"]["bias"], 0)
  np.testing.assert_array_equal(down["batch_stats"]["bn"]["var"], 1)
  block = hrnet.BasicBlock(8).init(key, jnp.zeros((1, 4, 4, 4)), train=False)
  assert set(block["params"]) == {
      "conv1", "bn1", "conv2", "bn2", "downsample_conv", "downsample_bn"}
  np.testing.assert_array_equal(block["params"]["bn2"]["scale"], 1)  # no zero-init of the last BN
  assert "downsample_conv" not in hrnet.BasicBlock(4).init(
      key, jnp.zeros((1, 4, 4, 4)), train=False)["params"]


def test_input_sizes_that_do_not_halve_evenly_are_refused(tiny):
  model, variables = tiny
  # 72 -> stem 18 -> branches 18, 9, 5, 3: 5 upsampled x2 is not 9, which timm cannot add either.
  with pytest.raises(ValueError, match=r"multiples of 32"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 72, 72, 3)), train=False), variables)


def test_invalid_architectures_are_refused():
  bad = [
      (dict(num_modules=(1, 1, 4)), "4 stages"),
      (dict(block_types=("BOTTLENECK", "BASIC", "BASIC", "MBCONV")), "unknown block type"),
      (dict(num_blocks=((4,), (4, 4), (4, 4, 4), (4, 4, 4))), "one entry per branch"),
      (dict(num_blocks=((4,), (4, 0), (4, 4, 4), (4, 4, 4, 4))), ">= 1"),
      (dict(num_blocks=((4, 4), (4, 4), (4, 4, 4), (4, 4, 4, 4)),
            num_channels=((64, 64), (18, 36), (18, 36, 72), (18, 36, 72, 144))), "stage 1"),
      (dict(num_blocks=((4,), (4, 4), (4, 4, 4), (4, 4, 4)),
            num_channels=((64,), (18, 36), (18, 36, 72), (18, 36, 72))), "4 branches"),
  ]
  for arch, message in bad:
    with pytest.raises(ValueError, match=message):
      hrnet.from_timm({}, **arch)


def test_bfloat16_compute(tiny):
  model, variables = tiny
  x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  ref, _ = model.apply(variables, x, train=False)
  bf16 = hrnet.Model(num_classes=10, dtype=jnp.bfloat16, **TINY)
  # Jitted: eagerly, every op would compile again for bfloat16.
  logits, aux = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
  assert logits.dtype == jnp.float32 and aux["features"].dtype == jnp.float32
  assert all(s.dtype == jnp.bfloat16 for s in aux["stages"])
  assert float(jnp.abs(logits - ref).max()) < 0.1 * float(jnp.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# timm state dicts.


def test_from_timm_maps_and_transposes():
  state = random_state()
  variables = hrnet.from_timm(state, **TINY)
  params, stats = variables["params"], variables["batch_stats"]
  conv = lambda k: state[k].transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(params["conv1"]["kernel"], conv("conv1.weight"))
  np.testing.assert_array_equal(params["layer1_0"]["downsample_conv"]["kernel"],
                                conv("layer1.0.downsample.0.weight"))
  np.testing.assert_array_equal(params["transition2_1"]["conv"]["kernel"],
                                conv("transition2.1.0.weight"))
  np.testing.assert_array_equal(params["transition3_3"]["step0"]["bn"]["scale"],
                                state["transition3.3.0.1.weight"])
  np.testing.assert_array_equal(params["stage3_1"]["branches_2_0"]["conv1"]["kernel"][1, 2, 3, 4],
                                state["stage3.1.branches.2.0.conv1.weight"][4, 3, 1, 2])
  np.testing.assert_array_equal(params["stage4_0"]["fuse_layers_3_0"]["step2"]["conv"]["kernel"],
                                conv("stage4.0.fuse_layers.3.0.2.0.weight"))
  np.testing.assert_array_equal(stats["stage4_0"]["fuse_layers_0_2"]["bn"]["var"],
                                state["stage4.0.fuse_layers.0.2.1.running_var"])
  np.testing.assert_array_equal(params["downsamp_modules_1"]["conv"]["bias"],
                                state["downsamp_modules.1.0.bias"])
  np.testing.assert_array_equal(stats["incre_modules_2"]["bn3"]["mean"],
                                state["incre_modules.2.0.bn3.running_mean"])
  np.testing.assert_array_equal(params["classifier"]["kernel"], state["classifier.weight"].T)
  # Every tensor but num_batches_tracked lands somewhere, exactly once.
  assert len(jax.tree.leaves(variables)) == sum(
      not k.endswith("num_batches_tracked") for k in state)


@pytest.mark.parametrize("arch", [TINY, TINY_ALT], ids=["tiny", "tiny_alt"])
def test_from_timm_matches_the_models_tree(arch):
  shapes = abstract(hrnet.Model(num_classes=10, **arch))
  converted = hrnet.from_timm(random_state(arch), **arch)
  assert jax.tree.map(np.shape, converted) == jax.tree.map(np.shape, shapes)


def test_from_timm_reports_missing_unexpected_and_misshapen():
  state = random_state()
  del state["stage3.1.fuse_layers.2.0.1.0.weight"]
  state["final_layer.1.extra"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"missing keys stage3\.1\.fuse_layers\.2\.0\.1\.0\.weight;"
                                       r" unexpected keys final_layer\.1\.extra"):
    hrnet.from_timm(state, **TINY)
  # hrnet_w18's state dict is not the tiny one's.
  with pytest.raises(ValueError, match=r"missing keys transition2\.1\.0\.weight.*unexpected keys "
                                       r"layer1\.1\.bn1\.bias"):
    hrnet.from_timm(random_state(arch={}, num_classes=3), **TINY)
  state = random_state()
  state["stage2.0.branches.1.1.conv2.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"stage2\.0\.branches\.1\.1\.conv2\.weight: expected shape "
                                       r"\(8, 8, 3, 3\).*got \(8, 8, 1, 1\)"):
    hrnet.from_timm(state, **TINY)


def test_from_timm_classifier_options():
  with pytest.raises(ValueError, match="classifier.weight has 10 classes, expected num_classes=7"):
    hrnet.from_timm(random_state(), num_classes=7, **TINY)
  # 0 means a state dict of timm's num_classes=0 model: a classifier there is unexpected.
  with pytest.raises(ValueError, match=r"unexpected keys classifier\.bias, classifier\.weight"):
    hrnet.from_timm(random_state(), num_classes=0, **TINY)
  headless = hrnet.from_timm(random_state(num_classes=0), **TINY)
  assert "classifier" not in headless["params"]
  assert hrnet.from_timm(random_state(), **TINY)["params"]["classifier"]["kernel"].shape == (
      2048, 10)


def test_load_pretrained_same_head_and_abstract_targets(tmp_path, tiny):
  model, fresh = tiny
  path = tmp_path / "model.safetensors"
  state = random_state(seed=1)
  save_file(state, str(path))
  expected = flat(hrnet.from_timm(state, **TINY))
  loaded = hrnet.load_pretrained(fresh, path, **TINY)
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  for key, value in flat(loaded).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=str(key))
  for key, value in flat(hrnet.load_pretrained(abstract(model), str(path), **TINY)).items():
    np.testing.assert_array_equal(value, expected[key], err_msg=str(key))


def test_load_pretrained_keeps_a_fresh_head_of_another_size(tmp_path, tiny):
  _, fresh = tiny  # 10 classes
  path = tmp_path / "imagenet.safetensors"
  state = random_state(num_classes=1000, seed=1)
  save_file(state, str(path))
  expected = flat(hrnet.from_timm(state, **TINY))
  loaded = flat(hrnet.load_pretrained(fresh, path, **TINY))
  for key, value in loaded.items():
    if key[:2] == ("params", "classifier"):
      np.testing.assert_array_equal(value, flat(fresh)[key])
      assert value.shape[-1] == 10
    else:
      np.testing.assert_array_equal(value, expected[key], err_msg=str(key))
  # A backbone (num_classes=0) drops the file's classifier; a file without one leaves the model's.
  backbone = {**fresh, "params": {k: v for k, v in fresh["params"].items() if k != "classifier"}}
  assert "classifier" not in hrnet.load_pretrained(backbone, path, **TINY)["params"]
  save_file(random_state(num_classes=0, seed=1), str(path))
  headless = hrnet.load_pretrained(fresh, path, **TINY)
  np.testing.assert_array_equal(headless["params"]["classifier"]["kernel"],
                                fresh["params"]["classifier"]["kernel"])


def test_load_pretrained_architecture_mismatch_and_missing_file(tmp_path, tiny):
  _, fresh = tiny
  path = tmp_path / "model.safetensors"
  save_file(random_state(seed=1), str(path))
  # The file is read as the architecture the caller names: the default hrnet_w18 here.
  with pytest.raises(ValueError,
                     match=r"not a timm HRNet.*stem_width=64.*missing keys layer1\.1\."):
    hrnet.load_pretrained(fresh, path)
  missing = tmp_path / "nowhere" / "model.safetensors"
  with pytest.raises(FileNotFoundError, match=r"nowhere/model\.safetensors.*timm-layout HRNet"
                                              r".*timm/hrnet_w18\.ms_aug_in1k"):
    hrnet.load_pretrained(fresh, missing, **TINY)


def test_checkpoints_name_their_files_and_transforms():
  from iab_jax.data import transforms

  assert hrnet.CHECKPOINTS["hrnet_w18.ms_aug_in1k"]["source"] == "timm/hrnet_w18.ms_aug_in1k"
  for name, entry in hrnet.CHECKPOINTS.items():
    assert entry["filename"] == "model.safetensors"
    assert entry["source"] == f"timm/{name}"
    transforms.parse(entry["preprocess"])
    hrnet.Model(num_classes=1000, **entry["arch"])


# ---------------------------------------------------------------------------------------------
# Parity with timm itself.


def _timm():
  pytest.importorskip("torch", reason="torch is needed for the parity tests against timm")
  return pytest.importorskip("timm", reason="timm is needed for the parity tests against timm")


def _timm_cfg(arch):
  """timm's cfg dict for one of the test architectures (hrnet_w18's with arch's changes)."""
  from timm.models.hrnet import cfg_cls

  cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_cls["hrnet_w18"].items()}
  cfg["stem_width"] = arch.get("stem_width", 64)
  block_types = arch.get("block_types", ("BOTTLENECK", "BASIC", "BASIC", "BASIC"))
  for s in range(4):
    stage = cfg[f"stage{s + 1}"]
    stage.update(block_type=block_types[s], num_blocks=arch["num_blocks"][s],
                 num_channels=arch["num_channels"][s], num_modules=arch["num_modules"][s],
                 num_branches=len(arch["num_blocks"][s]))
  return cfg


def _check_parity(net, model, variables, x, rel=1e-4):
  """Our logits, pooled feature and four last-stage branches against timm's."""
  ref_logits, ref = torch_forward(net, x, {"features": net.global_pool, "stages": net.stage4})
  out, aux = model.apply(variables, jnp.asarray(x), train=False)
  assert_close(out, ref_logits, rel)
  assert_close(aux["features"], ref["features"], rel)
  assert len(aux["stages"]) == 4
  assert_each_close(aux["stages"], ref["stages"], rel)


@pytest.fixture(scope="module")
def tiny_pair():
  timm = _timm()
  import torch

  torch.manual_seed(0)
  net = timm.models.hrnet.HighResolutionNet(_timm_cfg(TINY), num_classes=10)
  randomise_batch_norms(net, torch.randn(4, 3, 64, 64))
  model = hrnet.Model(num_classes=10, **hrnet.arch_from_timm_cfg(_timm_cfg(TINY)))
  return net, model


def test_arch_from_timm_cfg():
  _timm()
  from timm.models.hrnet import cfg_cls

  assert hrnet.arch_from_timm_cfg(cfg_cls["hrnet_w18"]) == dict(
      stem_width=64, block_types=("BOTTLENECK", "BASIC", "BASIC", "BASIC"),
      num_blocks=((4,), (4, 4), (4, 4, 4), (4, 4, 4, 4)),
      num_channels=((64,), (18, 36), (18, 36, 72), (18, 36, 72, 144)),
      num_modules=(1, 1, 4, 3))
  # ... which are the Model's defaults.
  defaults = hrnet.Model(num_classes=1)
  for field, value in hrnet.arch_from_timm_cfg(cfg_cls["hrnet_w18"]).items():
    assert getattr(defaults, field) == value
  assert hrnet.arch_from_timm_cfg(cfg_cls["hrnet_w18_small_v2"]) == (
      hrnet.CHECKPOINTS["hrnet_w18_small_v2.ms_in1k"]["arch"])
  with pytest.raises(ValueError, match="fuse_method"):
    hrnet.arch_from_timm_cfg({**cfg_cls["hrnet_w18"],
                              "stage2": {**cfg_cls["hrnet_w18"]["stage2"], "fuse_method": "CAT"}})


@pytest.mark.parametrize("arch", [TINY, TINY_ALT], ids=["tiny", "tiny_alt"])
def test_state_helper_matches_timm(arch):
  timm = _timm()
  net = timm.models.hrnet.HighResolutionNet(
      _timm_cfg(arch), num_classes=10, head_conv_bias=arch.get("head_conv_bias", True))
  assert {k: v.shape for k, v in random_state(arch).items()} == {
      k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_eval_parity_tiny(tiny_pair):
  net, model = tiny_pair
  variables = hrnet.from_timm(numpy_state(net), num_classes=10, **TINY)
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  _check_parity(net, model, variables, x)


def test_eval_parity_tiny_alt():
  timm = _timm()
  import torch

  torch.manual_seed(1)
  net = timm.models.hrnet.HighResolutionNet(_timm_cfg(TINY_ALT), num_classes=0,
                                            head_conv_bias=False)
  randomise_batch_norms(net, torch.randn(4, 3, 64, 64))
  model = hrnet.Model(num_classes=0, **TINY_ALT)
  variables = hrnet.from_timm(numpy_state(net), num_classes=0, **TINY_ALT)
  x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
  _check_parity(net, model, variables, x)


def test_train_parity_tiny(tiny_pair):
  net, model = tiny_pair
  state = numpy_state(net)
  variables = hrnet.from_timm(state, num_classes=10, **TINY)
  x = np.random.default_rng(5).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with training(net, state):
    ref_logits, _ = torch_forward(net, x)
    ref_state = numpy_state(net)
  (logits, _), updates = model.apply(variables, jnp.asarray(x), train=True,
                                     mutable=["batch_stats"])
  assert_close(logits, ref_logits, 1e-4)
  # torch's update: 0.9 * old + 0.1 * batch statistic, the variance unbiased.
  assert_trees_close(updates["batch_stats"], hrnet.from_timm(ref_state, **TINY)["batch_stats"],
                     1e-4)


def test_eval_parity_full_hrnet_w18():
  timm = _timm()
  import torch

  torch.manual_seed(2)
  net = randomise_batch_norms(timm.create_model("hrnet_w18", pretrained=False),
                              torch.randn(2, 3, 64, 64))
  state = numpy_state(net)
  model = hrnet.Model(num_classes=1000)
  variables = hrnet.from_timm(state, num_classes=1000)
  assert sum(p.numel() for p in net.parameters()) == W18_PARAMS
  x = np.random.default_rng(2).standard_normal((1, 64, 64, 3)).astype(np.float32)
  _check_parity(net, model, variables, x)
