"""CLIP-LR (Cioni et al.): a logistic regression on frozen CLIP ViT-H/14 image embeddings.

The image tower of LAION's CLIP ViT-H/14 (laion2B-s32B-b79K; iab_jax/models/clip_vit.py) maps
every image once to its projected embedding (1024-d, what transformers' `get_image_features`
returns); the loop caches those features (FrozenFeatures "clip") and this method never sees a
pixel. The head is scikit-learn's recipe, refitted here in JAX (iab_jax/methods/logistic.py):
StandardScaler, then a multinomial L2 logistic regression (C=1) fitted by L-BFGS on every
training example at once, up to 1000 iterations. The official code does the same in one "epoch";
the linear_probe trainer calls `fit` once.

Variables: {"params": {"kernel" (D, C), "bias" (C,)}, "scaler": {"mean" (D,), "scale" (D,)}}.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iab_jax.methods import base, classifier, logistic, official

FEATURES = "clip"  # the key of the cached embeddings in batch["features"]
OFFICIAL_LAYOUT = "clip_lr_state_dict.txt"
# config.model fields that are clip_vit.Model's architecture (the rest name the weights).
ARCH_FIELDS = ("width", "layers", "heads", "patch_size", "image_size", "embed_dim", "activation")
_LOGISTIC_FIELDS = ("C", "max_iter", "tol", "memory", "max_linesearch_steps")


class ClipLR(base.Method):
  trainer = "linear_probe"
  uses_images = False
  features_name = FEATURES  # the key of the cached embeddings the head reads

  @classmethod
  def check_config(cls, config):
    cls.check_tower(config)
    classifier.check_fields(config, "logistic", _LOGISTIC_FIELDS)
    lr = config.logistic
    if lr.get("C", 1.0) <= 0:
      raise ValueError(f"config.logistic.C={lr.C}; expected > 0 (inverse L2 strength)")

  @classmethod
  def check_tower(cls, config):
    """config.model: the frozen CLIP image tower's architecture and weights."""
    model = config.get("model")
    if model is None:
      raise ValueError("config.model is missing; expected the CLIP image tower's architecture "
                       f"({', '.join(ARCH_FIELDS)}) and `pretrained`")
    missing = [k for k in ARCH_FIELDS + ("pretrained",) if k not in model]
    if missing:
      raise ValueError(f"config.model.{missing[0]} is missing; expected {', '.join(ARCH_FIELDS)}, "
                       "pretrained")
    unknown = set(model) - set(ARCH_FIELDS) - {"pretrained", "weights_dir", "dtype"}
    if unknown:
      raise ValueError(f"config.model.{sorted(unknown)[0]}: unknown; expected "
                       f"{', '.join(ARCH_FIELDS)}, pretrained, weights_dir, dtype")
    if model.activation not in ("gelu", "quick_gelu"):
      raise ValueError(f"config.model.activation={model.activation!r}; expected 'gelu' (LAION) or "
                       "'quick_gelu' (OpenAI)")

  @property
  def dim(self) -> int:
    return int(self.config.model.embed_dim)

  def phases(self):
    # One pass over the training set: the official "epoch" of train_linear_probe.
    return [base.Phase("fit", 1, self.config.get("optimizer", {}))]

  # -------------------------------------------------------------------------------------------
  # The frozen image tower.

  def _tower(self):
    from iab_jax.models import clip_vit

    arch = {k: self.config.model[k] for k in ARCH_FIELDS}
    dtype = jnp.dtype(self.config.model.get("dtype", "float32"))
    return clip_vit, clip_vit.Model(num_classes=0, dtype=dtype, **arch), arch

  def _weights_file(self) -> str | None:
    """The tower's weights file, or None for a random stand-in (runlocal/minibench fallback)."""
    from iab_jax import weights

    pretrained = self.config.model.pretrained
    if not pretrained:
      return None
    return weights.resolve_or_random(pretrained, self.config, "config.model.pretrained")

  def frozen_features(self):
    if getattr(self, "_features", None) is None:  # resolves the weights file once per method
      self._features = [self._frozen_tower()]
    return self._features

  def _frozen_tower(self) -> base.FrozenFeatures:
    module, model, arch = self._tower()
    return frozen_network(self, FEATURES, "clip_vit", module, model, arch, int(arch["image_size"]),
                          ("CLIP image tower", "CLIP"))

  # -------------------------------------------------------------------------------------------
  # The head.

  def init(self, rng, images=None, pretrained=True):
    del rng, images, pretrained  # the head starts where sklearn's does: zeros, fitted by `fit`
    return {"params": {"kernel": jnp.zeros((self.dim, self.num_classes), jnp.float32),
                       "bias": jnp.zeros((self.num_classes,), jnp.float32)},
            "scaler": {"mean": jnp.zeros((self.dim,), jnp.float32),
                       "scale": jnp.ones((self.dim,), jnp.float32)}}

  def fit(self, variables, features, labels):
    del variables  # refitted from scratch, as sklearn's fit does
    x = jnp.asarray(features[self.features_name], jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    if x.shape != (y.shape[0], self.dim):
      raise ValueError(f"features[{self.features_name!r}] has shape {x.shape}, expected "
                       f"({y.shape[0]}, {self.dim}) for {y.shape[0]} labels")
    lr = self.config.logistic
    start = time.perf_counter()
    scaler = logistic.standard_scaler(x)
    params, info = logistic.fit(
        logistic.standardise(scaler, x), y, self.num_classes, C=float(lr.get("C", 1.0)),
        max_iter=int(lr.get("max_iter", 1000)), tol=float(lr.get("tol", 1e-4)),
        memory=int(lr.get("memory", 10)),
        max_linesearch_steps=int(lr.get("max_linesearch_steps", 50)))
    report = {**info.as_dict(), "num_examples": int(y.shape[0]),
              "seconds": round(time.perf_counter() - start, 3)}
    return {"params": params, "scaler": scaler}, report

  def _logits(self, variables, batch):
    z = logistic.standardise(variables["scaler"], batch["features"][self.features_name])
    return logistic.logits(variables["params"], z)

  def loss(self, variables, batch, rng, phase):
    """The mean log-loss of a batch (no penalty): for logging; the head is fitted by `fit`."""
    del rng, phase
    logits = self._logits(variables, batch)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({}, {"accuracy": accuracy})

  def predict(self, variables, batch):
    return jax.nn.softmax(self._logits(variables, batch), axis=-1)


def frozen_network(method, name: str, kind: str, module, model, arch: dict, image_size: int,
                   what: tuple[str, str], rng_impl: str | None = None) -> base.FrozenFeatures:
  """`method`'s frozen backbone `model` (a Model(num_classes=0) of iab_jax.models `module`) as
  FrozenFeatures `name`: its pooled output on the method's evaluation transform, built from the
  weights file the config names or, without one, randomly initialised from key 0 (`rng_impl`).

  Its identity is `kind`, the architecture `arch` and the compute dtype (bfloat16 changes the
  features too), then the file's identity or "random(seed=0)" ("random(<impl>,seed=0)"), so that
  runs and methods sharing the backbone share its cache. `what`: (the network, its weights) as
  the log names them.
  """
  from iab_jax import console, weights

  path = method._weights_file()
  arch_text = kind + json.dumps({**arch, "dtype": jnp.dtype(model.dtype).name}, sort_keys=True,
                                separators=(",", ":"))
  if path is None:
    identity = f"{arch_text}:random({rng_impl + ',' if rng_impl else ''}seed=0)"
    console.say("%s: the features come from a randomly initialised %s (%s), not from %s",
                method.display_name, what[0], arch_text, what[1])
  else:
    identity = f"{arch_text}:{weights.file_identity(path)}"

  def build():
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    init = lambda: model.init(jax.random.key(0, impl=rng_impl), images, train=False)
    if path is None:
      variables = jax.jit(init)()  # one program: initialisers op by op compile one by one
    else:
      # A headless Model(num_classes=0) has no place for the file's classifier: it is dropped.
      variables = weights.load_into(dict(jax.eval_shape(init)), module, path)

    def apply(variables, images):
      return model.apply(variables, images, train=False)[0]  # the pooled features

    return apply, variables

  return base.FrozenFeatures(name=name, transform=method.config.input.eval_transform,
                             identity=identity, dim=method.dim, build=build)


# ---------------------------------------------------------------------------------------------
# The authors' released checkpoint.

VISION_FILE = "clip_lr_official_vision_tower.safetensors"


def import_official(state, config, out_dir: str, *, layout=None) -> base.OfficialImport:
  """The official CLIP-LR state dict (the whole HF CLIPModel, `clip_model.*`) -> a weights file.

  The file holds no fitted scaler or logistic regression (the official FIXME), so there are no
  variables to test with: the image tower (vision_model.* and visual_projection.weight) is written
  to <out_dir>/VISION_FILE in transformers' layout, which clip_vit's loader reads, and the run
  that refits the head names it in config.model.pretrained. The text tower is checked, not kept.
  `layout` replaces the official key/shape list (tests with a small CLIPModel of the same keys).
  """
  del config
  from safetensors.numpy import save_file

  official.check_state(state, layout or official.read_layout(OFFICIAL_LAYOUT),
                       "official clip_lr checkpoint")
  prefix = "clip_model."
  vision = {k[len(prefix):]: np.ascontiguousarray(np.asarray(v, np.float32))
            for k, v in state.items()
            if k.startswith((prefix + "vision_model.", prefix + "visual_projection."))}
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, VISION_FILE)
  save_file(vision, path, metadata={"source": "official CLIP-LR checkpoint (clip_model.*)"})
  return base.OfficialImport(
      variables=None, overrides={"model.pretrained": path},
      notes=["the released CLIP-LR file has no fitted scaler/logistic regression (official "
             "FIXME); the head is refitted from features: run python -m iab_jax.main --config "
             f"configs/clip_lr.py:standard,official --config.model.pretrained={path} "
             "--workdir ..."])
