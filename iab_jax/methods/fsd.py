"""FSD (Few-Shot Detector; IAB paper appendix D): ResNet-50, a 1024-d embedding, a linear classifier.

The paper's recipe, not in the official code: an ImageNet-pretrained ResNet-50 whose final layer
is replaced by a 1024-d embedding head, a linear attribution classifier on the embedding, softmax
cross-entropy, Adam 1e-4 halved every 5 epochs, batch 32, 10 epochs on both tasks.

The embedding head is one linear layer, Dense(2048 -> 1024), with no nonlinearity after it: the
original few-shot code (teheperinko541/Few-Shot-AIGI-Detector, train.py) builds it as
`timm.create_model("resnet50", pretrained=True, num_classes=1024)`, i.e. ResNet-50's fc resized
to 1024 outputs. So the network is iab_jax.models.resnet with num_classes = 1024 (its `fc` is the
embedding, initialised fresh, as the ImageNet fc has 1000 outputs) and a Dense(1024 -> C)
`classifier`:

  params/backbone/{conv1, bn1, layer1_0, ..., fc}  ResNet-50 (torchvision layout), fc = embedding
  params/classifier                                the attribution classifier
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.methods import base, classifier
from iab_jax.models import _torch_init, resnet

_MODEL_FIELDS = ("pretrained", "weights_dir", "embed_dim", "stage_sizes", "width", "dtype")


class FsdNet(nn.Module):
  """ResNet (its fc widened to the embedding) + a linear classifier; returns (logits, aux)."""
  num_classes: int
  embed_dim: int = 1024
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    embedding, aux = resnet.Model(num_classes=self.embed_dim, stage_sizes=tuple(self.stage_sizes),
                                  width=self.width, dtype=self.dtype, name="backbone")(
                                      x, train=train)
    # torch's nn.Linear initialisation, as a fresh torch head starts.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_torch_init.kernel_init,
                      bias_init=_torch_init.bias_init(self.embed_dim), name="classifier")(embedding)
    return logits, {"embedding": embedding, "features": aux["features"]}


class Fsd(classifier.Classifier):
  """The supervised classifier recipe (loss, predict) on FsdNet."""

  @classmethod
  def check_config(cls, config):
    classifier.check_model_fields(config, _MODEL_FIELDS)
    model = config.model
    if int(model.get("embed_dim", 1024)) < 1:
      raise ValueError(f"config.model.embed_dim={model.embed_dim}; expected >= 1")

  def __init__(self, config, classes):
    base.Method.__init__(self, config, classes)
    model = config.model
    self.model = FsdNet(num_classes=self.num_classes, embed_dim=int(model.get("embed_dim", 1024)),
                        stage_sizes=tuple(model.get("stage_sizes", (3, 4, 6, 3))),
                        width=int(model.get("width", 64)),
                        dtype=jnp.dtype(model.get("dtype", "float32")))
    # One compiled program: a deep network's initialisers dispatched op by op compile one by one.
    self._init_fn = jax.jit(lambda rng, images: self.model.init({"params": rng}, images,
                                                                train=False))

  def init(self, rng, images, pretrained=True):
    variables = dict(self._init_fn(rng, images))
    if pretrained and self.config.model.get("pretrained"):
      # ImageNet weights for the ResNet; its 1000-way fc does not fit the 1024-d embedding
      # layer, which stays as initialised.
      variables = classifier.load_backbone_resnet(variables, self.config)
    return variables


def from_torch(state: dict[str, np.ndarray], stage_sizes: Sequence[int] = (3, 4, 6, 3)
               ) -> dict[str, Any]:
  """A torch FSD state dict -> variables: torchvision's resnet with fc = Sequential(
  Linear(2048, embed_dim), Linear(embed_dim, C)), the re-statement the tests compare with."""
  torchvision_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
  torchvision_state["fc.weight"], torchvision_state["fc.bias"] = state["fc.0.weight"], state[
      "fc.0.bias"]
  converted = resnet.from_torchvision(torchvision_state, stage_sizes=stage_sizes)
  head = {"kernel": np.ascontiguousarray(np.asarray(state["fc.1.weight"], np.float32).T),
          "bias": np.asarray(state["fc.1.bias"], np.float32)}
  return {"params": {"backbone": converted["params"], "classifier": head},
          "batch_stats": {"backbone": converted["batch_stats"]}}
