"""Features+LR: a logistic regression on a frozen backbone's features, the OFA issue's baseline.

One-for-All (Table 1, 4, 5 style comparisons) needs a reference that knows nothing about
generators: image-to-model verification and open-set attribution on the features of an
off-the-shelf network. The backbone is a config value (config.model.backbone):

  "resnet50"  iab_jax/models/resnet.py Model(num_classes=0): the pooled 2048-d feature of
              torchvision's ImageNet ResNet-50 (resnet50.tv_in1k), input resize(256) |
              central_crop(224) | ImageNet mean/std
  "clip_vit"  iab_jax/models/clip_vit.py: the projected 768-d image embedding of OpenAI's CLIP
              ViT-L/14 (clip_vit_l14_openai), input CLIP's own preprocessing

The loop caches the features (FrozenFeatures); the head is CLIP-LR's (iab_jax/methods/clip_lr.py,
iab_jax/methods/logistic.py): StandardScaler + multinomial L2 logistic regression fitted once by
L-BFGS through the linear_probe trainer. `predict` is its softmax, `embed` the raw frozen features
(the verification evaluator compares them by cosine similarity, Method.pair_scores' default).

Feature names and identities follow the cache's rules: the CLIP tower's features are named "clip"
with CLIP-LR's identity ("clip_vit{arch}:<weights>"), so the two methods share a cache entry when
they share the tower and transform; the ResNet's are "resnet50" with "resnet{arch}:<weights>".
A randomly initialised stand-in (runlocal/minibench, no weights file) is "...:random(seed=0)"
(CLIP-LR's) or "...:random(rbg,seed=0)" (the ResNet, drawn from an rbg key).

Variables: {"params": {"kernel" (D, C), "bias" (C,)}, "scaler": {"mean" (D,), "scale" (D,)}}.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from iab_jax.methods import base, clip_lr

BACKBONES = ("resnet50", "clip_vit")
# config.model fields of each backbone besides `backbone`: its architecture, then the weights.
RESNET_ARCH_FIELDS = ("stage_sizes", "width")
WEIGHT_FIELDS = ("pretrained", "weights_dir", "dtype")
FIELDS = {"resnet50": RESNET_ARCH_FIELDS + WEIGHT_FIELDS,
          "clip_vit": clip_lr.ARCH_FIELDS + WEIGHT_FIELDS}
FEATURES = {"resnet50": "resnet50", "clip_vit": clip_lr.FEATURES}  # keys in batch["features"]


BACKBONE_NAMES = {"resnet50": "ResNet-50", "clip_vit": "CLIP ViT"}


class EmbeddingLR(clip_lr.ClipLR):
  """CLIP-LR's head (fit, predict, loss, init, phases) on a configurable frozen backbone."""

  display_name = "Features+LR"

  @classmethod
  def check_config(cls, config):
    model = config.get("model")
    if model is None or "backbone" not in model:
      raise ValueError("config.model.backbone is missing; expected one of "
                       f"{', '.join(BACKBONES)}")
    backbone = model.backbone
    if backbone not in BACKBONES:
      raise ValueError(f"config.model.backbone={backbone!r}; expected one of "
                       f"{', '.join(BACKBONES)}")
    fields = FIELDS[backbone]
    missing = [k for k in fields if k not in model]
    if missing:
      raise ValueError(f"config.model.{missing[0]} is missing for backbone {backbone!r}; "
                       f"expected {', '.join(fields)}; choose the backbone with "
                       "configs/embedding_lr.py:<task>,backbone=<name>")
    unknown = sorted(set(model) - set(fields) - {"backbone"})
    if unknown:
      # The usual cause: --config.model.backbone=... overridden alone, leaving the other
      # backbone's fields; the config arg's option sets the backbone with its fields.
      raise ValueError(f"config.model.{unknown[0]}: not a field of backbone {backbone!r} "
                       f"(expected {', '.join(fields)}); choose the backbone with "
                       "configs/embedding_lr.py:<task>,backbone=<name>")
    if backbone == "resnet50":
      if not all(int(n) >= 1 for n in model.stage_sizes) or int(model.width) < 1:
        raise ValueError(f"config.model.stage_sizes={tuple(model.stage_sizes)}, width="
                         f"{model.width}; expected positive block counts and width")
      # CLIP-LR checks its head's config after its tower's: give it a valid tower to reach it.
      probe = ml_collections.ConfigDict({"model": _clip_l14_model(), "logistic": config.get(
          "logistic")})
    else:
      probe = ml_collections.ConfigDict({"model": {k: model[k] for k in fields},
                                         "logistic": config.get("logistic")})
    clip_lr.ClipLR.check_config(probe)

  def __init__(self, config, classes):
    super().__init__(config, classes)
    # The tables tell the backbones apart: "Features+LR (ResNet-50)", "Features+LR (CLIP ViT)".
    self.display_name = f"{type(self).display_name} ({BACKBONE_NAMES[self.backbone]})"

  @property
  def backbone(self) -> str:
    return self.config.model.backbone

  @property
  def features_name(self) -> str:
    return FEATURES[self.backbone]

  @property
  def dim(self) -> int:
    if self.backbone == "resnet50":
      # The pooled output of the last stage: 4 (bottleneck expansion) * width * 2**3.
      return 32 * int(self.config.model.width)
    return int(self.config.model.embed_dim)

  # -------------------------------------------------------------------------------------------
  # The frozen backbone.

  def frozen_features(self):
    if getattr(self, "_features", None) is None:  # resolves the weights file once per method
      if self.backbone == "resnet50":
        self._features = [self._frozen_resnet()]
      else:
        self._features = [self._frozen_tower()]  # CLIP-LR's, so that the caches coincide
    return self._features

  def _resnet(self):
    from iab_jax.models import resnet

    arch = {"stage_sizes": tuple(int(n) for n in self.config.model.stage_sizes),
            "width": int(self.config.model.width)}
    dtype = jnp.dtype(self.config.model.get("dtype", "float32"))
    return resnet, resnet.Model(num_classes=0, dtype=dtype, **arch), arch

  def _frozen_resnet(self) -> base.FrozenFeatures:
    module, model, arch = self._resnet()
    # The stem and pooling take any size; 224 is what the ImageNet weights were trained at. rbg:
    # threefry's initialisers compile about twice as slowly on CPU (as in defl.py).
    return clip_lr.frozen_network(self, FEATURES["resnet50"], "resnet", module, model, arch, 224,
                                  ("ResNet", "ImageNet weights"), rng_impl="rbg")

  # -------------------------------------------------------------------------------------------
  # The head (CLIP-LR's) reads its features under CLIP-LR's key.

  def embed(self, variables, batch):
    del variables
    return jnp.asarray(batch["features"][self.features_name], jnp.float32)


def _clip_l14_model() -> dict:
  from iab_jax.models import clip_vit

  return {**clip_vit.CHECKPOINTS["clip_vit_l14_openai"]["arch"], "pretrained": ""}
