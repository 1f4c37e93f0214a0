"""CLIP-LR: the JAX logistic regression against scikit-learn, the frozen tower against transformers'
CLIPModel through the official-checkpoint import, the official parameter counts, the configs."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from configs import clip_lr as clip_lr_config
from iab_jax.methods import clip_lr, logistic, official

CLASSES = [f"class{i}" for i in range(7)]


def overlapping_gaussians(n=600, d=64, c=7, seed=0, spread=0.15):
  """Features whose classes overlap (a linear probe reaches ~60%), with per-feature offsets and
  scales that the scaler must undo, and one constant feature."""
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((c, d)) * spread
  y = rng.integers(0, c, n)
  x = (centers[y] + rng.standard_normal((n, d))) * rng.uniform(0.5, 3, d) + rng.uniform(-5, 5, d)
  x[:, 3] = 2.5
  return x.astype(np.float32), y


def sklearn_pipeline(x, y, **kwargs):
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  scaler = StandardScaler().fit(x)
  lr = LogisticRegression(C=1.0, max_iter=1000, solver="lbfgs", **kwargs).fit(scaler.transform(x), y)
  return scaler, lr


@pytest.fixture(scope="module")
def data():
  return overlapping_gaussians()


def test_scaler_matches_sklearn(data):
  from sklearn.preprocessing import StandardScaler

  x, _ = data
  scaler = StandardScaler().fit(x[:50])
  ours = logistic.standard_scaler(x[:50])
  np.testing.assert_allclose(ours["mean"], scaler.mean_, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours["scale"], scaler.scale_, rtol=1e-5)
  assert float(ours["scale"][3]) == 1.0  # the constant feature keeps scale 1, as in sklearn
  np.testing.assert_allclose(logistic.standardise(ours, x[:50]), scaler.transform(x[:50]),
                             atol=1e-5)


def test_logistic_regression_matches_sklearn(data):
  x, y = data
  z = logistic.standardise(logistic.standard_scaler(x), x)
  # The same optimum: sklearn to float64 precision, ours to float32's.
  scaler, exact = sklearn_pipeline(x, y, tol=1e-8)
  params, info = logistic.fit(z, y, len(CLASSES), tol=1e-6)
  probs = np.asarray(logistic.predict_proba(params, z))
  reference = exact.predict_proba(scaler.transform(x))
  assert np.abs(probs - reference).max() < 1e-3
  assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.99
  # sklearn's objective: summed log-loss + 0.5/C ||W||^2 (W is coef_.T), bias unpenalised.
  w, b = exact.coef_.T, exact.intercept_
  logits = scaler.transform(x) @ w + b
  log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
      - logits.max(1, keepdims=True)
  objective = -log_p[np.arange(len(y)), y].sum() + 0.5 * np.sum(w**2)
  assert abs(info.loss - objective) < 1e-4 * objective
  assert info.converged and info.iterations < 1000
  # The recipe's tolerance (sklearn's default, 1e-4) against sklearn's default fit.
  params, info = logistic.fit(z, y, len(CLASSES))
  default = sklearn_pipeline(x, y)[1].predict_proba(scaler.transform(x))
  probs = np.asarray(logistic.predict_proba(params, z))
  assert np.mean(probs.argmax(1) == default.argmax(1)) >= 0.99
  assert np.abs(probs - default).max() < 5e-3
  assert info.grad_max <= 1e-4 and info.converged


def test_logistic_regression_stops_at_max_iter(data):
  x, y = data
  _, info = logistic.fit(x / 10, y, len(CLASSES), max_iter=3, tol=0.0)
  assert info.iterations == 3 and not info.converged


def small_config(arg="standard,runlocal"):
  config = clip_lr_config.get_config(arg)
  config.model.update({"width": 32, "layers": 2, "heads": 2, "patch_size": 14, "image_size": 28,
                       "embed_dim": 8})
  return config


def test_method_fit_and_predict_equal_sklearn(data):
  x, y = data
  config = small_config()
  config.model.embed_dim = x.shape[1]
  method = clip_lr.ClipLR(config, CLASSES)
  assert method.trainer == "linear_probe" and not method.uses_images
  variables = method.init(jax.random.key(0))
  assert variables["params"]["kernel"].shape == (64, 7)
  config.logistic.tol = 1e-6
  variables, report = method.fit(variables, {"clip": x}, y)
  assert report["converged"] and report["num_examples"] == 600 and report["iterations"] > 0
  scaler, exact = sklearn_pipeline(x, y, tol=1e-8)
  probs = jax.jit(method.predict)(variables, {"features": {"clip": jnp.asarray(x[:100])}})
  np.testing.assert_allclose(probs, exact.predict_proba(scaler.transform(x[:100])), atol=1e-3)
  loss, (_, measurements) = method.loss(variables, {"features": {"clip": x}, "label": y}, None,
                                        None)
  assert 0 < float(loss) < np.log(7) and float(measurements["accuracy"]) > 0.5


# ---------------------------------------------------------------------------------------------
# The official checkpoint: a tiny transformers CLIPModel with exactly the official key names.


@pytest.fixture(scope="module")
def tiny_clip():
  import torch
  import transformers
  torch.manual_seed(0)
  # ViT-H/14's 32 vision blocks and the text tower's 24, at toy widths: the official key names.
  config = transformers.CLIPConfig(
      text_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=24,
                       num_attention_heads=2, max_position_embeddings=77),
      vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=32,
                         num_attention_heads=2, patch_size=14, image_size=28, hidden_act="gelu"),
      projection_dim=8)
  net = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for name, p in net.vision_model.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.3 * torch.randn_like(p))
  state = {f"clip_model.{k}": v.numpy().copy() for k, v in net.state_dict().items()}
  return torch, net, state


def test_import_official_writes_the_vision_tower(tiny_clip, tmp_path):
  torch, net, state = tiny_clip
  expected = official.read_layout(clip_lr.OFFICIAL_LAYOUT)
  assert set(state) == set(expected) and len(expected) == 910
  layout = {k: tuple(v.shape) for k, v in state.items()}
  result = clip_lr.import_official(state, small_config(), str(tmp_path), layout=layout)
  assert result.variables is None and "refitted" in result.notes[0]
  path = result.overrides["model.pretrained"]

  config = small_config()
  config.model.update({"pretrained": path, "layers": 32})
  config.random_init_fallback = False
  method = clip_lr.ClipLR(config, CLASSES)
  (features,) = method.frozen_features()
  assert features.name == "clip" and features.dim == 8
  assert features.identity.startswith("clip_vit{") and clip_lr.VISION_FILE in features.identity
  apply, variables = features.build()
  x = np.random.default_rng(1).standard_normal((2, 28, 28, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(apply)(variables, jnp.asarray(x)))
  with torch.no_grad():
    out = net.get_image_features(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding.
  reference = (out if torch.is_tensor(out) else out.pooler_output).numpy()
  assert ours.shape == (2, 8)
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def full_size_state(layout):
  """Zero-strided arrays of the official shapes: the key checks run, nothing is allocated."""
  return {k: np.broadcast_to(np.float32(0), shape) for k, shape in layout.items()}


@pytest.mark.parametrize("change, message", [
    ("missing", r"key 'clip_model\.visual_projection\.weight' of the official layout is missing"),
    ("extra", r"unexpected key 'clip_model\.head\.weight'"),
    ("shape", r"key 'clip_model\.vision_model\.pre_layrnorm\.bias' has shape \(3,\), "
     r"the official layout has \(1280,\)"),
])
def test_import_official_rejects_other_layouts(tmp_path, change, message):
  state = full_size_state(official.read_layout(clip_lr.OFFICIAL_LAYOUT))
  if change == "missing":
    del state["clip_model.visual_projection.weight"]
  elif change == "extra":
    state["clip_model.head.weight"] = np.zeros((2, 2), np.float32)
  else:
    state["clip_model.vision_model.pre_layrnorm.bias"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=message) as e:
    clip_lr.import_official(state, small_config(), str(tmp_path))
  assert "\n" not in str(e.value)
  assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Sizes and configs.


def test_official_size_parameter_counts():
  config = clip_lr_config.get_config("standard")
  method = clip_lr.ClipLR(config, [f"c{i}" for i in range(23)])
  _, model, _ = method._tower()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  count = lambda tree: sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))
  # METHODS.md section 5: vision_model 630,766,080 + visual_projection 1,310,720.
  assert count(shapes["params"]) == 630_766_080 + 1_310_720
  assert shapes["params"]["proj"]["kernel"].shape == (1280, 1024)
  # The fitted head: 23 x 1024 + 23 (plus the scaler's 2 x 1024 statistics).
  head = method.init(jax.random.key(0))
  assert count(head["params"]) == 23_575 and count(head["scaler"]) == 2048


def test_configs():
  default = clip_lr_config.get_config("standard")
  official = clip_lr_config.get_config("standard,official")
  assert default.input.transform == default.input.eval_transform == \
      "resize(224, method='bicubic')|central_crop(224)|normalize('clip')"
  assert official.input.eval_transform == "resize(256)|central_crop(224)|normalize('half')"
  assert default.model.pretrained == "clip_vit_h14_laion2b" and default.model.embed_dim == 1024
  assert dict(default.logistic) == {"C": 1.0, "max_iter": 1000, "tol": 1e-4, "memory": 10,
                                    "max_linesearch_steps": 50}
  for config in (default, official, clip_lr_config.get_config("semantic1,minibench")):
    clip_lr.ClipLR.check_config(config)
  method = clip_lr.ClipLR(default, CLASSES)
  assert [p.num_epochs for p in method.phases()] == [1]
  bad = clip_lr_config.get_config("standard")
  bad.model.widht = 3
  with pytest.raises(ValueError, match=r"config\.model\.widht"):
    clip_lr.ClipLR.check_config(bad)
  bad = clip_lr_config.get_config("standard")
  bad.logistic.C = 0.0
  with pytest.raises(ValueError, match=r"config\.logistic\.C"):
    clip_lr.ClipLR.check_config(bad)
