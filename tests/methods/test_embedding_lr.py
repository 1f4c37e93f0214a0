"""Features+LR: the frozen ResNet's features against torchvision's through a weights file, the CLIP
tower's against its own apply and CLIP-LR's cache identity, embed, the head against scikit-learn,
parameter counts, the configs, and a linear_probe run end to end."""

from __future__ import annotations

import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from configs import embedding_lr as config_lib
from iab_jax.methods import clip_lr, embedding_lr
from tests.methods.test_clip_lr import overlapping_gaussians, sklearn_pipeline

CLASSES = [f"class{i}" for i in range(7)]


def count(tree) -> int:
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))


def runlocal(backbone="resnet50", task="standard"):
  return config_lib.get_config(f"{task},runlocal,backbone={backbone}")


# ---------------------------------------------------------------------------------------------
# The frozen backbones.


def test_resnet_features_equal_torchvision_through_a_weights_file(tmp_path):
  """A torchvision bottleneck ResNet (one block per stage, random BN statistics) saved as a
  safetensors file: our frozen features are its pooled features (its fc dropped)."""
  import torch
  from safetensors.torch import save_file
  from torchvision.models.resnet import Bottleneck, ResNet

  torch.manual_seed(0)
  net = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=1000).eval()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
  path = str(tmp_path / "resnet.safetensors")
  save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)

  config = runlocal()
  config.model.update({"width": 64, "pretrained": path})
  config.random_init_fallback = False
  method = embedding_lr.EmbeddingLR(config, CLASSES)
  (spec,) = method.frozen_features()
  assert spec.name == "resnet50" and spec.dim == 2048 and method.dim == 2048
  assert spec.transform == config.input.eval_transform
  assert spec.identity.startswith('resnet{"dtype":"float32","stage_sizes":[1,1,1,1],"width":64}:')
  assert "resnet.safetensors" in spec.identity and "random" not in spec.identity
  apply, variables = spec.build()
  assert "fc" not in variables["params"]
  x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(apply)(variables, jnp.asarray(x)))
  net.fc = torch.nn.Identity()
  with torch.no_grad():
    reference = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  assert ours.shape == (2, 2048)
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_random_resnet_stand_in():
  """Without a weights file (runlocal): a seed-0 ResNet of the config's size, so named."""
  from iab_jax.models import resnet

  method = embedding_lr.EmbeddingLR(runlocal(), CLASSES)
  (spec,) = method.frozen_features()
  assert spec.identity.endswith(":random(rbg,seed=0)") and spec.dim == 512
  apply, variables = spec.build()
  model = resnet.Model(num_classes=0, stage_sizes=(1, 1, 1, 1), width=16)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, shapes)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3)), jnp.float32)
  ours = jax.jit(apply)(variables, x)
  expected, aux = model.apply(variables, x, train=False)
  assert ours.shape == (2, 512)
  np.testing.assert_allclose(ours, aux["features"], rtol=1e-5, atol=1e-6)


def test_clip_features_equal_the_tower_and_share_clip_lrs_cache():
  from iab_jax.models import clip_vit

  config = runlocal("clip_vit")
  method = embedding_lr.EmbeddingLR(config, CLASSES)
  (spec,) = method.frozen_features()
  assert spec.name == "clip" and spec.dim == 64 and spec.identity.endswith(":random(seed=0)")
  apply, variables = spec.build()
  arch = {k: config.model[k] for k in clip_lr.ARCH_FIELDS}
  model = clip_vit.Model(num_classes=0, **arch)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 64, 64, 3)), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, shapes)
  expected = model.apply(variables, x, train=False)[1]["embedding"]
  np.testing.assert_allclose(jax.jit(apply)(variables, x), expected, rtol=1e-5, atol=1e-6)
  # CLIP-LR on the same tower and transform: the same cache entry (name, identity, transform).
  lr_config = runlocal("clip_vit")
  del lr_config.model["backbone"]
  lr_config.method = "clip_lr"
  (lr_spec,) = clip_lr.ClipLR(lr_config, CLASSES).frozen_features()
  assert (lr_spec.name, lr_spec.identity, lr_spec.transform) == (
      spec.name, spec.identity, spec.transform)
  # Another architecture or a ResNet: another identity.
  other = runlocal("clip_vit")
  other.model.layers = 3
  assert embedding_lr.EmbeddingLR(other, CLASSES).frozen_features()[0].identity != spec.identity


# ---------------------------------------------------------------------------------------------
# The head and embed.


@pytest.mark.parametrize("backbone", ["resnet50", "clip_vit"])
def test_fit_predict_equal_sklearn_and_embed_returns_the_features(backbone):
  x, y = overlapping_gaussians()
  config = runlocal(backbone)
  if backbone == "resnet50":
    config.model.width = 2  # 64-d features, the Gaussians' width
  else:
    config.model.embed_dim = 64
  config.logistic.tol = 1e-6
  method = embedding_lr.EmbeddingLR(config, CLASSES)
  name = method.features_name
  assert method.trainer == "linear_probe" and not method.uses_images and method.dim == 64
  assert not method.reject_class and method.display_name.startswith("Features+LR (")
  variables, report = method.fit(method.init(jax.random.key(0)), {name: x}, y)
  assert report["converged"] and report["num_examples"] == 600
  scaler, exact = sklearn_pipeline(x, y, tol=1e-8)
  batch = {"features": {name: jnp.asarray(x[:100])}}
  probs = jax.jit(method.predict)(variables, batch)
  np.testing.assert_allclose(probs, exact.predict_proba(scaler.transform(x[:100])), atol=1e-3)
  loss, (_, measurements) = method.loss(variables, {"features": {name: x}, "label": y}, None,
                                        None)
  assert 0 < float(loss) < np.log(7) and float(measurements["accuracy"]) > 0.5
  # embed: the raw frozen features (not standardised); pair scores: their cosine similarity.
  embedded = jax.jit(method.embed)(variables, batch)
  np.testing.assert_array_equal(embedded, x[:100])
  scores = np.asarray(method.pair_scores(variables, embedded[:5], embedded[5:12]))
  unit = x[:12] / np.linalg.norm(x[:12], axis=1, keepdims=True)
  np.testing.assert_allclose(scores, unit[:5] @ unit[5:12].T, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Sizes and configs.


def test_full_size_parameter_counts_and_dims():
  resnet_method = embedding_lr.EmbeddingLR(config_lib.get_config("standard"), CLASSES)
  _, model, _ = resnet_method._resnet()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  # torchvision resnet50 without its fc: 25,557,032 - (2048 * 1000 + 1000).
  assert count(shapes["params"]) == 23_508_032 and resnet_method.dim == 2048
  clip_method = embedding_lr.EmbeddingLR(config_lib.get_config("standard,backbone=clip_vit"),
                                         CLASSES)
  _, tower, _ = clip_method._tower()
  shapes = jax.eval_shape(lambda: tower.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  # clip_vit.CHECKPOINTS["clip_vit_l14_openai"]: 303,966,208 with the projection (1024 x 768).
  assert count(shapes["params"]) == 303_966_208 and clip_method.dim == 768
  head = clip_method.init(jax.random.key(0))
  assert count(head["params"]) == 768 * 7 + 7 and count(head["scaler"]) == 2 * 768


def test_configs():
  from iab_jax.models import clip_vit, resnet

  default = config_lib.get_config("standard")
  assert default.model.backbone == "resnet50" and default.model.pretrained == "resnet50.tv_in1k"
  assert default.input.transform == default.input.eval_transform == \
      resnet.CHECKPOINTS["resnet50.tv_in1k"]["preprocess"]
  clip = config_lib.get_config("semantic1,backbone=clip_vit")
  checkpoint = clip_vit.CHECKPOINTS["clip_vit_l14_openai"]
  assert clip.model.pretrained == "clip_vit_l14_openai" and clip.task == "semantic:cat"
  assert {k: clip.model[k] for k in checkpoint["arch"]} == checkpoint["arch"]
  assert clip.input.eval_transform == checkpoint["preprocess"]
  assert dict(default.logistic) == dict(clip.logistic) == {
      "C": 1.0, "max_iter": 1000, "tol": 1e-4, "memory": 10, "max_linesearch_steps": 50}
  for arg in ("standard", "standard,official", "standard,backbone=clip_vit,official",
              "semantic1,minibench", "standard,minibench,backbone=clip_vit",
              "standard,runlocal,backbone=clip_vit"):
    config = config_lib.get_config(arg)
    embedding_lr.EmbeddingLR.check_config(config)
    assert config.method == "embedding_lr"
  small = config_lib.get_config("standard,minibench")
  assert small.random_init_fallback and small.model.pretrained == ""
  assert tuple(small.model.stage_sizes) == (1, 1, 1, 1) and small.model.width == 32
  assert [p.num_epochs for p in embedding_lr.EmbeddingLR(default, CLASSES).phases()] == [1]

  with pytest.raises(ValueError, match=r"backbone=vgg"):
    config_lib.get_config("standard,backbone=vgg")
  with pytest.raises(ValueError, match=r"unknown config option 'bogus'"):
    config_lib.get_config("standard,bogus")
  # The backbone overridden alone keeps the ResNet's fields: stopped, naming the option.
  bad = config_lib.get_config("standard")
  bad.model.backbone = "clip_vit"
  with pytest.raises(ValueError, match=r"config\.model\.\w+ .*backbone 'clip_vit'.*backbone=<"):
    embedding_lr.EmbeddingLR.check_config(bad)
  bad = config_lib.get_config("standard")
  bad.model.backbone = "vgg"
  with pytest.raises(ValueError, match=r"config\.model\.backbone='vgg'"):
    embedding_lr.EmbeddingLR.check_config(bad)
  bad = config_lib.get_config("standard,backbone=clip_vit")
  bad.model.activation = "relu"
  with pytest.raises(ValueError, match=r"config\.model\.activation"):
    embedding_lr.EmbeddingLR.check_config(bad)
  for backbone in ("resnet50", "clip_vit"):
    bad = config_lib.get_config(f"standard,backbone={backbone}")
    bad.logistic.C = 0.0
    with pytest.raises(ValueError, match=r"config\.logistic\.C"):
      embedding_lr.EmbeddingLR.check_config(bad)


# ---------------------------------------------------------------------------------------------
# End to end through the real loop (linear_probe trainer, feature cache, evaluators).


@pytest.mark.parametrize("backbone", ["resnet50", "clip_vit"])
def test_linear_probe_run_end_to_end(backbone, tiny_bench, tmp_path):
  import json

  from iab_jax import methods, runs
  from tests.methods.test_end_to_end import run_method

  assert methods.get("embedding_lr").display_name == "Features+LR"
  workdir = str(tmp_path / "run")
  config, results = run_method("embedding_lr", "standard", tiny_bench, workdir,
                               extra=f",backbone={backbone}")
  with open(os.path.join(workdir, runs.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["method"] == "embedding_lr" and len(saved["classes"]) == 7
  levels = saved["evals"]["test"]["levels"]
  assert sorted(levels, key=int) == [str(k) for k in range(7)]
  for level in levels.values():
    assert 0.0 <= level["accuracy"] <= 1.0 and level["num_examples"] == config.max_eval_examples
  assert results["checkpoint"]["step"] >= 1
  cached = os.listdir(os.path.join(os.path.dirname(workdir), "features"))
  assert any(d.startswith(embedding_lr.FEATURES[backbone] + "-train-L0-") for d in cached)
