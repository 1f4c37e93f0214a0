"""Every model module keeps the one contract the training loop and the weights registry rely on.

`Model(num_classes=..., **arch)`, `__call__(x, *, train) -> (output, aux)`: logits (N, C) float32
with a head, the pooled feature (N, D) without one (num_classes=0), aux["features"] always; a
`load_pretrained`, a `HEAD` where there is a classifier, and CHECKPOINTS the registry can list.
Checked by abstract evaluation on small configurations of each architecture (nothing is run).
"""

import dataclasses
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import pytest

from iab_jax import models, weights

# module: (small architecture, input size)
SMALL = {
    "resnet": (dict(stage_sizes=(1, 1, 1, 1), width=8), 32),
    "small_cnn": (dict(), 32),
    "dct_cnn": (dict(), 32),
    "hifi_net": (dict(stem_width=8, branch_channels=(4, 8, 8, 8), layer1_blocks=1,
                      branch_blocks=1), 32),
    "defl": (dict(stage_sizes=(1, 1, 1, 1), width=8, clip_dim=8, fingerprint_dim=16,
                  hidden=(8, 8)), 16),
    "xception": (dict(), 64),
    "convnext": (dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 32),
    "hrnet": (dict(stem_width=8, num_modules=(1, 1, 1, 1),
                   num_blocks=((1,), (1, 1), (1, 1, 1), (1, 1, 1, 1)),
                   num_channels=((8,), (4, 8), (4, 8, 16), (4, 8, 16, 32))), 64),
    "clip_vit": (dict(width=32, layers=1, heads=2, patch_size=8, image_size=32, embed_dim=16), 32),
    "clip_resnet": (dict(layers=(1, 1, 1, 1), width=16, embed_dim=32, heads=2, image_size=64), 64),
    "vgg": (dict(hidden=16), 32),
    "alexnet": (dict(hidden=16), 64),
    "dncnn": (dict(depth=3, width=8), 16),
    "patchcraft": (dict(width=8, stage_convs=(1, 1, 1, 1)), 32),
    "dna_det": (dict(widths=(8, 8, 16, 16), proj_dim=8), 32),
    "ofa_extractor": (dict(stage_sizes=(1, 1, 1, 1), width=8, embed_dim=16), 32),
}
NOT_MODELS = {  # not a network over one image to classes or features
    "lpips": "LPIPS",  # a distance between two images
    "ofa_simulator": "Simulator",  # a reconstruction through an architecture given per call
    "acm": "AttributionConsistency",  # reads frozen features, not images
}


def _modules():
  return sorted(m.name for m in pkgutil.iter_modules(models.__path__) if not m.name.startswith("_"))


def test_every_module_is_covered():
  assert set(_modules()) == set(SMALL) | set(NOT_MODELS)


def _abstract(module, num_classes):
  arch, size = SMALL[module.__name__.rsplit(".", 1)[1]]
  model = module.Model(num_classes=num_classes, **arch)
  x = jnp.zeros((2, size, size, 3), jnp.float32)
  (output, aux), variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), x, train=False))
  return x, output, aux, variables


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_contract(name):
  module = models.get(name)
  fields = {f.name for f in dataclasses.fields(module.Model)}
  assert {"num_classes", "dtype"} <= fields
  image_to_image = getattr(module, "OUTPUT_KIND", "") == "image"
  x, output, aux, variables = _abstract(module, 0)
  assert "params" in variables and "features" in aux
  assert aux["features"].ndim == 2 and aux["features"].dtype == jnp.float32
  if image_to_image:
    assert output.shape == x.shape
  else:
    assert output.shape == aux["features"].shape and output.dtype == jnp.float32
    _, logits, aux, variables = _abstract(module, 3)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    head = getattr(module, "HEAD", None)
    assert head in variables["params"], f"{name}.HEAD={head!r} must name the classifier params"
  # no public pretrained weights
  if name not in ("small_cnn", "dct_cnn", "hifi_net", "patchcraft", "dna_det"):
    assert callable(module.load_pretrained)
    # A composite network (Li et al.) loads the checkpoints its parts are registered under.
    assert module.CHECKPOINTS or getattr(module, "PRETRAINED_FROM", ())


@pytest.mark.parametrize("name", sorted(NOT_MODELS))
def test_non_model_modules(name):
  module = importlib.import_module(f"iab_jax.models.{name}")
  assert not hasattr(module, "Model") and hasattr(module, NOT_MODELS[name])


def test_registry_names_every_listed_checkpoint():
  listed = {n for m in _modules() for n in getattr(models.get(m), "CHECKPOINTS", {})}
  assert listed == set(weights.registry())
