"""Li et al. (MHF/DEFL): the filters, the loss, the sizes and the import of the authors' checkpoint.

References: the 254 MHFs rebuilt as truncated polynomial products (no scipy), the dual-margin
contrastive loss as the official double loop in numpy, the parameter counts of METHODS.md §5, the
official state-dict layout (data_prep/official_layouts/defl_state_dict.txt), and a PyTorch
re-statement of the official forward at a reduced size (open_clip's ModifiedResNet for CLIP,
torchvision's Bottleneck for the ResNet stages) whose logits the imported variables must give.
"""

import collections
import itertools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import defl as defl_config
from iab_jax.methods import defl
from iab_jax.models import defl as defl_model
from tests.models import harness

LAYOUT = os.path.join(os.path.dirname(__file__), "..", "..", "data_prep", "official_layouts",
                      defl.OFFICIAL_LAYOUT)
REDUCED = dict(stage_sizes=(1, 1, 1, 1), width=16, fingerprint_dim=64, hidden=(32, 16),
               clip_layers=(1, 1, 1, 1), clip_width=16, clip_embed_dim=32, clip_heads=2,
               clip_image_size=64, clip_dtype="float32", clip_text_layers=1, pretrained="",
               clip_pretrained="")


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# The filters.


def _truncated_product(offsets_list):
  """The sequential 'same' convolution of base filters, as polynomials in (row, col) offsets.

  A base filter is x^u - 1 (u its neighbour's offset from the centre). Each step multiplies by the
  next one and keeps only the terms with |row|, |col| <= 1, which is what convolve2d(mode='same')
  keeps of a 3x3 by 3x3 product."""
  poly = {offsets_list[0]: 1, (0, 0): -1}
  for u in offsets_list[1:]:
    out = collections.defaultdict(int)
    for (r, c), a in poly.items():
      for (dr, dc), b in ((u, 1), ((0, 0), -1)):
        out[(r + dr, c + dc)] += a * b
    poly = {k: v for k, v in out.items() if max(abs(k[0]), abs(k[1])) <= 1 and v}
  grid = np.zeros((3, 3))
  for (r, c), v in poly.items():
    grid[r + 1, c + 1] = v
  return grid


def test_base_filters():
  base = defl_model.base_filters()
  assert base.shape == (8, 3, 3)
  assert (base.sum(axis=(1, 2)) == 0).all() and (base[:, 1, 1] == -1).all()
  # horizontal 1 of the official filter.py: [[0, 1, 0], [0, -1, 0], [0, 0, 0]]
  np.testing.assert_array_equal(base[0], [[0, 1, 0], [0, -1, 0], [0, 0, 0]])
  np.testing.assert_array_equal(base[7], [[0, 0, 0], [0, -1, 0], [0, 0, 1]])
  neighbours = {tuple(np.argwhere(f == 1)[0]) for f in base}
  assert len(neighbours) == 8 and (1, 1) not in neighbours


def test_composite_filters_against_polynomial_products():
  filters = defl_model.composite_filters()
  assert filters.shape == (254, 3, 3) and filters.dtype == np.float32
  assert len({f.tobytes() for f in filters}) == 254  # all distinct
  offsets = [tuple(int(v) - 1 for v in np.argwhere(f == 1)[0]) for f in defl_model.base_filters()]
  subsets = [s for n in range(1, 8) for s in itertools.combinations(range(8), n)]
  assert len(subsets) == 254
  # Same order as the official list, and each filter the product of its own distinct subset.
  for f, subset in zip(filters, subsets):
    np.testing.assert_array_equal(f, _truncated_product([offsets[i] for i in subset]),
                                  err_msg=str(subset))


def test_groups_match_the_official_shuffle():
  filters = list(defl_model.composite_filters())
  np.random.seed(5)
  np.random.shuffle(filters)  # the official partition_mhfs, from that global state
  groups = defl_model.mhf_groups(5)
  assert groups.shape == (4, 64, 3, 3)
  np.testing.assert_array_equal(groups[0], np.stack(filters[:64]))
  np.testing.assert_array_equal(groups[2], np.stack(filters[128:192]))
  np.testing.assert_array_equal(groups[3], np.stack(filters[192:254] + filters[192:194]))
  assert not np.array_equal(defl_model.mhf_groups(6), groups)
  kernel = defl_model.dcb_kernel(5, 2, 128)  # (3, 3, in, 64): each MHF over every input channel
  assert kernel.shape == (3, 3, 128, 64)
  np.testing.assert_array_equal(kernel[:, :, 77, 10], groups[1, 10])


# ---------------------------------------------------------------------------------------------
# The dual-margin contrastive loss.


def _dmc_loop(f, labels, families, m1, m2, unknown):
  b = len(f)
  total, count = 0.0, 0
  for i in range(b):
    for j in range(i + 1, b):
      d = np.sqrt(np.sum((f[i] - f[j]) ** 2))
      if labels[i] == labels[j]:
        total += d
      elif families[i] < 0 or families[j] < 0:
        if unknown == "skip":
          continue
        total += max(m2 - d, 0.0)
      elif families[i] == families[j]:
        total += max(m1 - d, 0.0)
      else:
        total += max(m2 - d, 0.0)
      count += 1
  return total / (count if unknown == "skip" else b * (b - 1) / 2)


@pytest.mark.parametrize("unknown", ["different", "skip"])
def test_dual_margin_loss_against_double_loop(unknown):
  rng = np.random.default_rng(0)
  b = 9
  f = rng.standard_normal((b, 6)).astype(np.float32) * 2.5  # distances around both margins
  labels = np.array([0, 0, 1, 2, 2, 3, 4, 5, 5])
  families = np.array([1, 1, 1, 2, 2, -1, 3, -1, -1])
  got = defl.dual_margin_contrastive(jnp.asarray(f), jnp.asarray(labels), jnp.asarray(families),
                                     margin_same_family=5.0, margin_other_family=10.0,
                                     unknown_family=unknown)
  want = _dmc_loop(f.astype(np.float64), labels, families, 5.0, 10.0, unknown)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  assert float(defl.dual_margin_contrastive(jnp.asarray(f[:1]), jnp.asarray(labels[:1]),
                                            jnp.asarray(families[:1]))) == 0.0


def test_dual_margin_loss_gradient_at_identical_features():
  f = jnp.ones((4, 3))
  grad = jax.grad(lambda x: defl.dual_margin_contrastive(
      x, jnp.array([0, 0, 1, 2]), jnp.array([1, 1, 1, 2])))(f)
  assert np.isfinite(np.asarray(grad)).all()


# ---------------------------------------------------------------------------------------------
# Sizes and configs.


def test_official_parameter_counts():
  config = defl_config.get_config("standard,official")
  method = defl.Defl(config, [str(i) for i in range(23)])
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                pretrained=False))
  params = abstract["params"]
  assert _count({k: v for k, v in params.items() if k.startswith("level")}) == 446_336
  assert _count(params["adjust_channels"]) == 8_256
  assert _count(params["resnet"]) == 23_498_496
  assert _count(params["fusion_layer"]) == 5_769_216
  assert _count(params["nn_classifier"]) == 1_186_327
  assert _count(params) == 30_908_631  # §5: the trainable parameters (CLIP is frozen)
  assert "mhf" not in abstract  # official: the MHFs are trainable parameters


def test_configs():
  default = defl_config.get_config("standard")
  official = defl_config.get_config("semantic1,official")
  assert default.input.batch_size == official.input.batch_size == 8
  assert defl_config.get_config("semantic1").num_epochs == 15 and official.num_epochs == 10
  assert not default.model.train_filters and official.model.train_filters
  assert default.model.clip_dtype == "float32" and official.model.clip_dtype == "float16"
  assert default.input.transform == "resize(256)|central_crop(256)|normalize('half')"
  assert official.model.clip_transform == (
      "resize(384, method='bicubic')|central_crop(384)|normalize('clip')")
  small = defl_config.get_config("standard,runlocal")
  assert small.model.width == 16 and tuple(small.model.stage_sizes) == (1, 1, 1, 1)
  defl.Defl.check_config(small)
  small.loss.unknown_family = "ignore"
  with pytest.raises(ValueError, match="config.loss.unknown_family"):
    defl.Defl.check_config(small)


def test_fixed_filters_are_not_parameters():
  config = defl_config.get_config("standard,runlocal")
  method = defl.Defl(config, ["a", "b", "c"])
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3))))
  assert set(abstract["mhf"]) == {f"level{k}_dcb" for k in range(1, 5)}
  assert not any(k.endswith("_dcb") for k in abstract["params"])
  spec, = method.frozen_features()
  assert spec.name == "clip" and spec.dim == 32 and "random(rbg,seed=0)" in spec.identity
  config.model.train_filters = True
  abstract = jax.eval_shape(lambda: defl.Defl(config, ["a", "b", "c"]).init(
      jax.random.key(0), jnp.zeros((2, 16, 16, 3))))
  assert "mhf" not in abstract and "level3_dcb" in abstract["params"]


# ---------------------------------------------------------------------------------------------
# The official layout.


def _layout():
  shapes = {}
  for line in open(LAYOUT):
    key, shape = line.strip().split(": ")
    shapes[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
  return shapes


def _zero_state(shapes):
  # Zero-stride arrays: the full layout's 490M numbers take no memory.
  return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


def test_full_layout_keys_and_shapes():
  layout = _layout()
  assert len(layout) == 2070
  config = defl_config.get_config("standard,official")
  state = _zero_state(layout)
  assert defl.official_shapes(config, state, 23) == layout
  defl.check_official_layout(state, config)

  def fails(broken, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
      defl.import_official(broken, config, "/nonexistent")
    assert "\n" not in str(e.value)

  key = "semantic_extractor.resnet_for_defl.2.3.conv2.weight"
  fails({k: v for k, v in state.items() if k != key}, f"missing key '{re.escape(key)}'")
  fails({**state, "semantic_extractor.clip_model.visual.fc.weight": np.zeros(3, np.float32)},
        "unexpected key 'semantic_extractor.clip_model.visual.fc.weight'")
  fails({**state, "semantic_extractor.fusion_layer.weight": np.broadcast_to(np.float32(0),
                                                                           (2048, 2815))},
        r"'semantic_extractor.fusion_layer.weight' has shape \[2048, 2815\]")
  key = "semantic_extractor.clip_model.transformer.resblocks.11.ln_2.bias"
  fails({k: v for k, v in state.items() if k != key}, re.escape(key))


# ---------------------------------------------------------------------------------------------
# The import against a PyTorch re-statement of the official forward, at a reduced size.


def _official_torch_model(num_classes, seed=0):
  """The official DEFLAttributor's modules (backbones/defl/network.py, classifier.py) at REDUCED
  sizes, with the same registration (hence the same state-dict keys, aliases included)."""
  import torch
  import open_clip
  from torch import nn
  from torchvision.models.resnet import Bottleneck

  torch.manual_seed(seed)

  class DCB(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.conv = nn.Conv2d(cin, 64, 3, padding=1, bias=False)

    def forward(self, x):
      return torch.relu(self.conv(x))

  class SCB(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.conv = nn.Conv2d(cin, 64, 3, padding=1, bias=False)
      self.bn = nn.BatchNorm2d(64)

    def forward(self, x):
      return torch.relu(self.bn(self.conv(x)))

  class DEFLNetwork(nn.Module):
    def __init__(self):
      super().__init__()
      for k, cin in zip(range(1, 5), (3, 128, 128, 128)):
        setattr(self, f"level{k}_dcb", DCB(cin))
        setattr(self, f"level{k}_scb", SCB(cin))

    def forward(self, x):
      for k in range(1, 5):
        x = torch.cat([getattr(self, f"level{k}_dcb")(x), getattr(self, f"level{k}_scb")(x)], 1)
      return x

  class Block(nn.Module):  # OpenAI CLIP's text ResidualAttentionBlock (parameters only)
    def __init__(self, w):
      super().__init__()
      self.attn = nn.MultiheadAttention(w, 2)
      self.ln_1 = nn.LayerNorm(w)
      self.mlp = nn.Sequential(collections.OrderedDict(
          c_fc=nn.Linear(w, 4 * w), gelu=nn.GELU(), c_proj=nn.Linear(4 * w, w)))
      self.ln_2 = nn.LayerNorm(w)

  class Clip(nn.Module):
    def __init__(self, w=8):
      super().__init__()
      self.visual = open_clip.modified_resnet.ModifiedResNet(
          layers=REDUCED["clip_layers"], output_dim=REDUCED["clip_embed_dim"],
          heads=REDUCED["clip_heads"], image_size=REDUCED["clip_image_size"],
          width=REDUCED["clip_width"])
      self.transformer = nn.Module()
      self.transformer.resblocks = nn.ModuleList([Block(w) for _ in range(1)])
      self.token_embedding = nn.Embedding(11, w)
      self.positional_embedding = nn.Parameter(torch.randn(5, w))
      self.ln_final = nn.LayerNorm(w)
      self.text_projection = nn.Parameter(torch.randn(w, REDUCED["clip_embed_dim"]))
      self.logit_scale = nn.Parameter(torch.ones([]))

  def resnet_stages(width):
    layers, cin = [], width
    for i, n in enumerate(REDUCED["stage_sizes"]):
      planes, blocks = width * 2**i, []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        down = None
        if j == 0:
          down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                               nn.BatchNorm2d(planes * 4))
        blocks.append(Bottleneck(cin, planes, stride, down))
        cin = planes * 4
      layers.append(nn.Sequential(*blocks))
    # children()[4:] of a resnet50 with fc = Identity, then the added pool and flatten.
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Identity(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()), cin

  class SemanticFeatureExtractor(nn.Module):
    def __init__(self, defl_net):
      super().__init__()
      self.defl_model = defl_net
      self.clip_model = Clip()
      self.clip_model_visual = self.clip_model.visual
      self.adjust_channels = nn.Conv2d(128, REDUCED["width"], 1)
      self.resnet_for_defl, out = resnet_stages(REDUCED["width"])
      self.fusion_layer = nn.Linear(out + REDUCED["clip_embed_dim"], REDUCED["fingerprint_dim"])

    def forward(self, x, x_clip):
      r = self.resnet_for_defl(self.adjust_channels(self.defl_model(x)))
      return self.fusion_layer(torch.cat([r, self.clip_model_visual(x_clip)], 1))

  class Attributor(nn.Module):
    def __init__(self):
      super().__init__()
      self.defl_model = DEFLNetwork()
      self.semantic_extractor = SemanticFeatureExtractor(self.defl_model)
      h1, h2 = REDUCED["hidden"]
      self.nn_classifier = nn.Module()
      self.nn_classifier.fc1 = nn.Linear(REDUCED["fingerprint_dim"], h1)
      self.nn_classifier.fc2 = nn.Linear(h1, h2)
      self.nn_classifier.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x, x_clip):
      f = self.semantic_extractor(x, x_clip)
      c = self.nn_classifier
      return c.fc3(torch.relu(c.fc2(torch.relu(c.fc1(f))))), f

  net = Attributor()
  # Randomised BN statistics, calibrated by one training pass of each branch.
  harness.randomise_batch_norms(net.semantic_extractor.clip_model_visual, (2, 3, 64, 64))
  body = nn.Sequential(net.defl_model, net.semantic_extractor.adjust_channels,
                       net.semantic_extractor.resnet_for_defl)
  harness.randomise_batch_norms(body, (2, 3, 16, 16))
  return net.eval()


def test_import_matches_official_forward(tmp_path):
  import torch
  num_classes = 5
  net = _official_torch_model(num_classes)
  state = {k: v.detach().float().numpy().copy() for k, v in net.state_dict().items()}
  assert "semantic_extractor.clip_model_visual.attnpool.q_proj.weight" in state
  assert "semantic_extractor.defl_model.level2_scb.bn.running_var" in state

  config = defl_config.get_config("standard,official")
  config.model.update(REDUCED)
  imported = defl.import_official(state, config, str(tmp_path))
  assert imported.overrides == {"model.clip_pretrained": str(tmp_path / "defl_clip_visual.safetensors")}
  assert any("text tower" in n for n in imported.notes)
  config.model.update({k.split(".", 1)[1]: v for k, v in imported.overrides.items()})
  method = defl.Defl(config, [str(i) for i in range(num_classes)])
  abstract = jax.eval_shape(lambda: method.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                                pretrained=False))
  assert jax.tree.map(np.shape, imported.variables) == jax.tree.map(np.shape, abstract)

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
  x_clip = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    logits, fingerprint = net(harness.nchw(x), harness.nchw(x_clip))
    clip_ref = net.semantic_extractor.clip_model_visual(harness.nchw(x_clip)).numpy()

  spec, = method.frozen_features()
  assert "defl_clip_visual.safetensors" in spec.identity
  apply, clip_variables = spec.build()
  clip = np.asarray(jax.jit(apply)(clip_variables, jnp.asarray(x_clip)))
  harness.assert_close(clip, clip_ref, 1e-4, "clip")
  batch = {"image": jnp.asarray(x), "features": {"clip": jnp.asarray(clip)}}
  ours, aux = method.model.apply(imported.variables, batch["image"], batch["features"]["clip"],
                                 train=False)
  harness.assert_close(np.asarray(aux["fingerprint"]), fingerprint.numpy(), 1e-4, "fingerprint")
  harness.assert_close(np.asarray(ours), logits.numpy(), 1e-4, "logits")
  probs = np.asarray(method.predict(imported.variables, batch))
  np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=1e-5)

  # Aliases that disagree: the alias's value wins (what torch's load_state_dict leaves), and a
  # note says which.
  key = "level1_scb.bn.bias"
  state["semantic_extractor.defl_model." + key] = state["defl_model." + key] + 1.0
  again = defl.import_official(state, config, str(tmp_path))
  assert any("defl_model" in n and key in n for n in again.notes)
  np.testing.assert_array_equal(np.asarray(again.variables["params"]["level1_scb"]["bn"]["bias"]),
                                state["semantic_extractor.defl_model." + key])

  # The official float16 CLIP: same features to float16 precision (float32 on CPU, whose XLA
  # has no float16 attention).
  config.model.clip_dtype = "float16"
  spec16, = defl.Defl(config, [str(i) for i in range(num_classes)]).frozen_features()
  if jax.default_backend() == "cpu":
    assert spec16.identity == spec.identity
    return
  assert spec16.identity != spec.identity and "float16" in spec16.identity
  apply16, variables16 = spec16.build()
  harness.assert_close(np.asarray(jax.jit(apply16)(variables16, jnp.asarray(x_clip))), clip_ref,
                       3e-2, "clip float16")


def test_load_pretrained_fills_only_the_resnet_stages(tmp_path):
  import torch
  from safetensors.numpy import save_file
  from torchvision.models.resnet import Bottleneck, ResNet

  torch.manual_seed(0)
  reference = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)
  path = str(tmp_path / "resnet.safetensors")
  save_file({k: v.numpy().copy() for k, v in reference.state_dict().items()}, path)
  model = defl_model.Model(num_classes=3, stage_sizes=(1, 1, 1, 1), width=64, clip_dim=8,
                           fingerprint_dim=16, hidden=(8, 8))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                               train=False))
  loaded = defl_model.load_pretrained(abstract, path)
  np.testing.assert_array_equal(
      np.asarray(loaded["params"]["resnet"]["layer3_0"]["conv2"]["kernel"]),
      reference.layer3[0].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      np.asarray(loaded["batch_stats"]["resnet"]["layer1_0"]["downsample_bn"]["var"]),
      reference.layer1[0].downsample[1].running_var.numpy())
  # The stem and fc of the file have no place here; everything outside the stages is untouched.
  assert loaded["params"]["fusion_layer"] is abstract["params"]["fusion_layer"]
  assert loaded["batch_stats"]["level1_scb"] is abstract["batch_stats"]["level1_scb"]
