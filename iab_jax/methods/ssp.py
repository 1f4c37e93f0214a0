"""SSP, "A Single Simple Patch is All You Need" (Chen et al. 2024; IAB paper appendix D).

Each image is represented by its simplest patch: of 64 random 32x32 crops of the 256x256 centre
crop, the one with the lowest texture diversity (iab_jax.data.patches.simplest_patch), drawn
again every epoch in training and seeded per image in evaluation. The network upsamples the patch
bilinearly to 256x256 (torch's F.interpolate, align_corners=False), applies three fixed SRM
high-pass filters (KB / 4, KV / 12, the second-order horizontal filter / 2, each summed over the
colour channels, clipped by Hardtanh(-3, 3)) and an ImageNet ResNet-50 whose fc is a linear
layer over the classes. Softmax cross-entropy, Adam 1e-4, no schedule, 10 epochs on both tasks.

The original SSP (bcmi/SSP-AI-Generated-Image-Detection, networks/ssp.py) applies the SRM
filters between the upsampling and the ResNet; the benchmark's official code builds them but
never calls them, which `official` (config.model.srm=False) reproduces.

Parameter names follow the official checkpoint (official_layouts/ssp_state_dict.txt):
params/backbone/* is torchvision's resnet50 without its fc (iab_jax.models.resnet), params/fc the
head; the SRM kernel is a constant of the code (the file's `srm.kernel` is checked against it).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iab_jax.methods import base, classifier, official
from iab_jax.models import _torch_init, resnet

OFFICIAL_LAYOUT = "ssp_state_dict.txt"
_MODEL_FIELDS = ("pretrained", "weights_dir", "srm", "upsample_to", "stage_sizes", "width",
                 "dtype")

# SRM filters (Fridrich & Kodovsky's rich models, as SSP's srm_conv.py scales them).
SRM_KB = np.array([[0, 0, 0, 0, 0],
                   [0, -1, 2, -1, 0],
                   [0, 2, -4, 2, 0],
                   [0, -1, 2, -1, 0],
                   [0, 0, 0, 0, 0]], np.float64) / 4.0
SRM_KV = np.array([[-1, 2, -2, 2, -1],
                   [2, -6, 8, -6, 2],
                   [-2, 8, -12, 8, -2],
                   [2, -6, 8, -6, 2],
                   [-1, 2, -2, 2, -1]], np.float64) / 12.0
SRM_HORIZONTAL_2ND = np.array([[0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0],
                               [0, 1, -2, 1, 0],
                               [0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0]], np.float64) / 2.0


def srm_kernel(in_channels: int = 3) -> np.ndarray:
  """SRMConv2d_simple's kernel, torch layout (3 out, in_channels, 5, 5): each output is one
  filter applied to every input channel and summed."""
  filters = np.stack([SRM_KB, SRM_KV, SRM_HORIZONTAL_2ND])[:, None]
  return np.repeat(filters, in_channels, axis=1).astype(np.float32)


def srm_filter(x: jax.Array) -> jax.Array:
  """(N, H, W, 3) -> (N, H, W, 3) SRM residuals, zero-padded by 2, clipped to [-3, 3]."""
  kernel = jnp.asarray(srm_kernel(x.shape[-1]).transpose(2, 3, 1, 0), x.dtype)  # HWIO
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((2, 2), (2, 2)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(y, -3.0, 3.0)


def upsample_bilinear(x: jax.Array, size: int) -> jax.Array:
  """torch's F.interpolate(x, (size, size), mode='bilinear') (align_corners=False) when
  enlarging: half-pixel sample positions, edge pixels repeated."""
  if x.shape[1:3] == (size, size):
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)


class SspNet(nn.Module):
  """Simplest patch -> upsample -> SRM (optional) -> ResNet -> linear head: (logits, aux)."""
  num_classes: int
  srm: bool = True
  upsample_to: int = 256
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    x = upsample_bilinear(x.astype(jnp.float32), self.upsample_to)
    if self.srm:
      x = srm_filter(x)
    features, _ = resnet.Model(num_classes=0, stage_sizes=tuple(self.stage_sizes),
                               width=self.width, dtype=self.dtype, name="backbone")(
                                   x, train=train)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_torch_init.kernel_init,
                      bias_init=_torch_init.bias_init(features.shape[-1]), name="fc")(features)
    return logits, {"features": features}


class Ssp(classifier.Classifier):
  """The supervised classifier recipe (loss, predict) on SspNet."""
  display_name = "SSP"

  @classmethod
  def check_config(cls, config):
    classifier.check_model_fields(config, _MODEL_FIELDS)
    model = config.model
    if int(model.get("upsample_to", 256)) < 1:
      raise ValueError(f"config.model.upsample_to={model.upsample_to}; expected >= 1")

  def __init__(self, config, classes):
    base.Method.__init__(self, config, classes)
    model = config.model
    self.model = SspNet(num_classes=self.num_classes, srm=bool(model.get("srm", True)),
                        upsample_to=int(model.get("upsample_to", 256)),
                        stage_sizes=tuple(model.get("stage_sizes", (3, 4, 6, 3))),
                        width=int(model.get("width", 64)),
                        dtype=jnp.dtype(model.get("dtype", "float32")))
    # One compiled program: a deep network's initialisers dispatched op by op compile one by one.
    self._init_fn = jax.jit(lambda rng, images: self.model.init({"params": rng}, images,
                                                                train=False))

  def init(self, rng, images, pretrained=True):
    variables = dict(self._init_fn(rng, images))
    if pretrained and self.config.model.get("pretrained"):
      # ImageNet weights for the ResNet; the headless backbone drops the file's 1000-way fc.
      variables = classifier.load_backbone_resnet(variables, self.config)
    return variables


# ---------------------------------------------------------------------------------------------
# The official checkpoint.


def import_official(state: dict[str, np.ndarray], config, out_dir: str,
                    *, layout: dict[str, tuple[int, ...]] | None = None) -> base.OfficialImport:
  """The variables Ssp.init makes for `config`, holding the official checkpoint's weights.

  `backbone.*` is torchvision's resnet50 (fc = Identity), `fc.*` the Linear(2048, C) head, and
  `srm.kernel` the fixed SRM kernel, which must equal SSP's (it is code here). `layout` replaces
  the official key/shape list (tests at other sizes).
  """
  del out_dir
  what = "official SSP checkpoint"
  official.check_state(state, layout or official.read_layout(OFFICIAL_LAYOUT), what)
  if not np.allclose(np.asarray(state["srm.kernel"], np.float32), srm_kernel()):
    raise ValueError(f"{what}: key 'srm.kernel' differs from SSP's fixed SRM filters")
  stage_sizes = tuple(int(n) for n in config.model.get("stage_sizes", (3, 4, 6, 3)))
  torchvision_state = {k[len("backbone."):]: v for k, v in state.items()
                       if k.startswith("backbone.")}
  torchvision_state.update({k: v for k, v in state.items() if k.startswith("fc.")})
  converted = resnet.from_torchvision(torchvision_state, stage_sizes=stage_sizes)
  params = dict(converted["params"])
  fc = params.pop("fc")
  variables = {"params": {"backbone": params, "fc": fc},
               "batch_stats": {"backbone": converted["batch_stats"]}}
  notes = []
  if config.model.get("srm", True):
    notes.append("the official SSP never applied its SRM filters; test its checkpoint with "
                 "configs/ssp.py:<task>,official (config.model.srm=False)")
  return base.OfficialImport(
      variables={k: jax.tree.map(jnp.asarray, v) for k, v in variables.items()}, notes=notes)
