"""HiFi-Net: its pieces against brute-force references, its size and key layout against the
official model's, and an imported random official checkpoint against a PyTorch re-statement of
the official forward (FENet + NLCDetection's classification path)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hifi_net as hifi_config
from iab_jax import methods
from iab_jax.data import generators
from iab_jax.methods import hifi_net as hifi_method
from iab_jax.models import hifi_net as hifi_model

LAYOUT = "data_prep/official_layouts/hifi_net_state_dict.txt"
OFFICIAL_CLASSES = 23


def _layout():
  out = {}
  with open(LAYOUT) as f:
    for line in f:
      key, shape = line.strip().split(": ")
      out[key] = tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
  return out


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _official_model():
  return hifi_model.Model(num_classes=OFFICIAL_CLASSES, level_classes=(2, 4, 6))


# ---------------------------------------------------------------------------------------------
# Components.


def _bilinear_brute(img, out_h, out_w, src_of):
  """Per-pixel torch bilinear: src_of(dst, in_size, out_size) -> source coordinate."""
  h, w = img.shape[:2]
  out = np.zeros((out_h, out_w) + img.shape[2:])
  for i in range(out_h):
    sy = src_of(i, h, out_h)
    y0 = int(math.floor(sy))
    y1, ly = min(y0 + 1, h - 1), sy - y0
    for j in range(out_w):
      sx = src_of(j, w, out_w)
      x0 = int(math.floor(sx))
      x1, lx = min(x0 + 1, w - 1), sx - x0
      out[i, j] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1])
                   + ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
  return out


def test_laplacian_residuals_match_a_brute_force_loop():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 20, 24, 3)).astype(np.float32)
  scales = (2, 4, 8)
  ours = np.asarray(hifi_model.laplacian_residuals(jnp.asarray(x), scales))
  want = []
  for s in scales:
    g = np.exp(-((np.arange(3) - 1.0) / s)**2 / 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    per_image = []
    for img in x:
      h, w = img.shape[:2]
      smooth = np.zeros((h - 2, w - 2, img.shape[2]))
      for i in range(h - 2):
        for j in range(w - 2):
          smooth[i, j] = np.einsum("ab,abc->c", kernel, img[i:i + 3, j:j + 3])
      # down: F.interpolate(scale_factor=1/s): size floor(in / s), source (d + .5) * s - .5
      down = _bilinear_brute(smooth, (h - 2) // s, (w - 2) // s,
                             lambda d, n, m: max((d + 0.5) * s - 0.5, 0.0))
      up = _bilinear_brute(down, h, w, lambda d, n, m: max((d + 0.5) * n / m - 0.5, 0.0))
      per_image.append(img - up)
    want.append(np.stack(per_image))
  np.testing.assert_allclose(ours, np.concatenate(want, axis=-1), atol=1e-5)


@pytest.mark.parametrize("align_corners,scale,size", [
    (True, None, (17, 9)), (False, None, (40, 31)), (False, 0.25, (7, 7))])
def test_resize_matches_torch_interpolate(align_corners, scale, size):
  import torch
  import torch.nn.functional as F

  x = np.random.default_rng(1).normal(size=(2, 30, 28, 3)).astype(np.float32)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  if scale:
    want = F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False)
  else:
    want = F.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)
  want = want.permute(0, 2, 3, 1).numpy()
  ours = hifi_model.resize_bilinear(jnp.asarray(x), want.shape[1:3], align_corners=align_corners,
                                    scale=scale)
  np.testing.assert_allclose(np.asarray(ours), want, atol=1e-5)


def test_masked_cross_entropy_matches_a_loop():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  targets = np.array([0, -1, 3, -1, 2, 1], np.int32)
  terms = []
  for row, t in zip(logits, targets):
    if t >= 0:
      terms.append(np.log(np.exp(row).sum()) - row[t])
  ours = hifi_method.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(float(ours), np.mean(terms), rtol=1e-5)
  none_known = hifi_method.masked_cross_entropy(jnp.asarray(logits), jnp.full((6,), -1))
  assert float(none_known) == 0.0


def test_level_targets_take_levels_0_1_2_then_the_label():
  levels = jnp.array([[0, 1, 2, 7], [1, 2, 5, 22], [0, -1, -1, -1]], jnp.int32)
  label = jnp.array([4, 6, 2], jnp.int32)
  got = hifi_method.level_targets({"levels": levels, "label": label})
  np.testing.assert_array_equal(np.stack(got, 1),
                                [[0, 1, 2, 4], [1, 2, 5, 6], [0, -1, -1, 2]])


# The official dataset's label_mapping (dataset_hifi_net.py), the 23 classes in label order.
OFFICIAL_LABEL_MAPPING = [
    (0, 0, 0, 0), (0, 1, 3, 1), (0, 1, 2, 2), (0, 1, 2, 3), (0, 1, 2, 4), (0, 1, 2, 5),
    (0, 1, 1, 6), (0, 1, 1, 7), (0, 1, 1, 8), (0, 1, 1, 9), (0, 1, 1, 10), (0, 0, 0, 11),
    (0, 0, 0, 12), (0, 0, 0, 13), (0, 1, 3, 14), (0, 1, 3, 15), (0, 0, 0, 16), (0, 1, 4, 17),
    (0, 1, 4, 18), (0, 0, 0, 19), (0, 0, 0, 20), (0, 0, 0, 21), (1, 2, 5, 22)]


def test_hierarchy_of_the_official_classes_is_table_6():
  levels = [generators.family_levels(n) for n in generators.OFFICIAL_MODEL_ORDER]
  assert levels == OFFICIAL_LABEL_MAPPING
  # METHODS.md 1.4: L1 commercial 0 / open 1 / real 2; L2 commercial 0, SD 1, diffusers 2, DiT 3,
  # AR 4, real 5.
  assert generators.family_levels("dalle3")[:3] == (0, 0, 0)
  assert generators.family_levels("SDXL")[:3] == (0, 1, 1)
  assert generators.family_levels("FLUX")[:3] == (0, 1, 2)
  assert generators.family_levels("hunyuan")[:3] == (0, 1, 3)
  assert generators.family_levels("janus-pro")[:3] == (0, 1, 4)
  assert generators.family_levels("real")[:3] == (1, 2, 5)
  # Every target fits the Table 6 head sizes of the default config.
  sizes = hifi_config.get_config("standard").model.level_classes
  assert all(max(lv[i] for lv in levels) < sizes[i] for i in range(3))


# ---------------------------------------------------------------------------------------------
# Size and layout of the official model (abstract evaluation only).


def test_parameter_count_equals_the_official_model():
  x = jnp.zeros((2, 256, 256, 3))
  (logits, aux), variables = jax.eval_shape(
      lambda: _official_model().init_with_output(jax.random.key(0), x, train=False))
  assert logits.shape == (2, 23) and aux["features"].shape == (2, 18)
  assert [l.shape for l in aux["level_logits"]] == [(2, 2), (2, 4), (2, 6)]
  assert [s.shape for s in aux["stages"]] == [(2, 256, 256, 18), (2, 128, 128, 36),
                                              (2, 64, 64, 72), (2, 32, 32, 144)]
  # METHODS.md 5: 6,890,434 in all, 6,890,245 trainable, FENet 6,361,208; the 189 others are the
  # frozen all-ones mask convs, constants here.
  assert _count(variables["params"]) == 6_890_245
  assert _count(variables["params"]) + hifi_model.MASK_CONV_WEIGHTS == 6_890_434
  assert _count(variables["params"]["FENet"]) == 6_361_208


def test_key_table_is_the_official_layout():
  table = hifi_model.official_key_table(_official_model())
  assert {k: v[3] for k, v in table.items()} == _layout()


def _zero_state():
  return {k: np.zeros(shape, np.float32) for k, shape in _layout().items()}


def _official_config():
  return hifi_config.get_config("standard,official")


@pytest.mark.parametrize("change,needle", [
    (lambda s: s.pop("FENet.stage3.0.branches.2.1.conv2.weight"),
     "missing key FENet.stage3.0.branches.2.1.conv2.weight"),
    (lambda s: s.update({"SegNet.extra.weight": np.zeros(3, np.float32)}),
     "unexpected key SegNet.extra.weight"),
    (lambda s: s.update({"FENet.conv_1x1_merge.0.weight": np.zeros((64, 128, 1, 1), np.float32)}),
     "FENet.conv_1x1_merge.0.weight has shape (64, 128, 1, 1)"),
])
def test_import_rejects_a_bad_state_dict(change, needle):
  state = _zero_state()
  change(state)
  with pytest.raises(ValueError, match=None) as e:
    hifi_method.import_official(state, _official_config(), "/tmp")
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_import_needs_the_official_level_sizes():
  with pytest.raises(ValueError, match="level_classes"):
    hifi_method.import_official(_zero_state(), hifi_config.get_config("standard"), "/tmp")


# ---------------------------------------------------------------------------------------------
# A PyTorch re-statement of the official classification forward, built like the official code
# from the same sizes (its module names are the official state-dict keys).


def _torch_hifi_net(num_classes=23, level_classes=(2, 4, 6), stem=64, chans=(18, 36, 72, 144),
                    layer1_blocks=2, branch_blocks=2, scales=(2, 4, 8)):
  import torch
  from torch import nn
  import torch.nn.functional as F

  def bn(c, momentum=0.01):
    return nn.BatchNorm2d(c, momentum=momentum)

  def up(x, like):
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=True)

  class Basic(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), bn(c)
      self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), bn(c)

    def forward(self, x):
      return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)

  class Bottle(nn.Module):
    def __init__(self, inp, w):
      super().__init__()
      self.conv1, self.bn1 = nn.Conv2d(inp, w, 1, bias=False), bn(w)
      self.conv2, self.bn2 = nn.Conv2d(w, w, 3, 1, 1, bias=False), bn(w)
      self.conv3, self.bn3 = nn.Conv2d(w, 4 * w, 1, bias=False), bn(4 * w)
      self.downsample = (nn.Sequential(nn.Conv2d(inp, 4 * w, 1, bias=False), bn(4 * w))
                         if inp != 4 * w else None)

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
      return F.relu(y + (self.downsample(x) if self.downsample is not None else x))

  class Module(nn.Module):  # HighResolutionModule, 4 branches, SUM fuse
    def __init__(self):
      super().__init__()
      self.branches = nn.ModuleList(
          [nn.Sequential(*[Basic(c) for _ in range(branch_blocks)]) for c in chans])
      fuse = []
      for i in range(4):
        row = []
        for j in range(4):
          if j > i:
            row.append(nn.Sequential(nn.Conv2d(chans[j], chans[i], 1, bias=False), bn(chans[i])))
          elif j == i:
            row.append(None)
          else:
            steps = []
            for k in range(i - j):
              last = k == i - j - 1
              o = chans[i] if last else chans[j]
              steps.append(nn.Sequential(nn.Conv2d(chans[j], o, 3, 2, 1, bias=False), bn(o),
                                         *([] if last else [nn.ReLU()])))
            row.append(nn.Sequential(*steps))
        fuse.append(nn.ModuleList(row))
      self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs):
      xs = [b(x) for b, x in zip(self.branches, xs)]
      out = []
      for i in range(4):
        y = xs[0] if i == 0 else self.fuse_layers[i][0](xs[0])
        for j in range(1, 4):
          if j == i:
            y = y + xs[j]
          elif j > i:
            y = y + up(self.fuse_layers[i][j](xs[j]), xs[i])
          else:
            y = y + self.fuse_layers[i][j](xs[j])
        out.append(F.relu(y))
      return out

  class Gaussian(nn.Module):
    def __init__(self, c, sigma):
      super().__init__()
      g = torch.exp(-((torch.arange(3.0) - 1) / sigma)**2 / 2)
      k = torch.outer(g, g)
      self.register_buffer("weight", (k / k.sum()).expand(c, 1, 3, 3).clone())
      self.c = c

    def forward(self, x):
      return F.conv2d(x, self.weight, groups=self.c)

  class Laplacian(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.smoothing = nn.ModuleDict({f"scale-{s}": Gaussian(c, s) for s in scales})
      self.conv_1x1 = nn.Sequential(nn.Conv2d(c * len(scales), c, 1, bias=False),
                                    nn.BatchNorm2d(c), nn.ReLU(), nn.Dropout(0.2))

    def forward(self, x):
      diffs = []
      for s in scales:
        sm = F.interpolate(self.smoothing[f"scale-{s}"](x), scale_factor=1 / s, mode="bilinear",
                           align_corners=False)
        diffs.append(x - F.interpolate(sm, size=x.shape[2:], mode="bilinear",
                                       align_corners=False))
      return self.conv_1x1(torch.cat(diffs, 1))

  class FENet(nn.Module):
    def __init__(self):
      super().__init__()
      for suffix in ("", "fre"):
        setattr(self, f"conv1{suffix}", nn.Conv2d(3, stem, 3, 1, 1, bias=False))
        setattr(self, f"bn1{suffix}", bn(stem))
        setattr(self, f"conv2{suffix}", nn.Conv2d(stem, stem, 3, 1, 1, bias=False))
        setattr(self, f"bn2{suffix}", bn(stem))
      self.laplacian = Laplacian(stem)
      self.conv_1x1_merge = nn.Sequential(nn.Conv2d(2 * stem, stem, 1, bias=False, groups=2),
                                          nn.BatchNorm2d(stem), nn.ReLU(), nn.Dropout(0.2))
      self.layer1 = nn.Sequential(*[Bottle(stem if k == 0 else 4 * stem, stem)
                                    for k in range(layer1_blocks)])
      wide = 4 * stem
      trans = [nn.Sequential(nn.Conv2d(wide, chans[0], 3, 1, 1, bias=False), bn(chans[0]),
                             nn.ReLU())]
      for i in range(1, 4):
        trans.append(nn.Sequential(*[
            nn.Sequential(nn.Conv2d(wide, chans[i] if k == i - 1 else wide, 3, 2, 1, bias=False),
                          bn(chans[i] if k == i - 1 else wide), nn.ReLU()) for k in range(i)]))
      self.transition1 = nn.ModuleList(trans)
      self.stage2, self.stage3, self.stage4 = (nn.Sequential(Module()) for _ in range(3))

    def forward(self, x):
      fre = self.laplacian(F.relu(self.bn1fre(self.conv1fre(x))))
      fre = F.relu(self.bn2fre(self.conv2fre(fre)))
      x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
      x = self.layer1(self.conv_1x1_merge(torch.cat([x, fre], 1)))
      xs = [t(x) for t in self.transition1]
      return self.stage4(self.stage3(self.stage2(xs)))

  class PartialConv(nn.Module):
    def __init__(self, out):
      super().__init__()
      self.input_conv = nn.Conv2d(3, out, 3, 2, 0)
      self.mask_conv = nn.Conv2d(3, out, 3, 2, 0, bias=False)
      nn.init.constant_(self.mask_conv.weight, 1.0)
      self.mask_conv.weight.requires_grad = False

    def forward(self, x, mask):
      out = self.input_conv(x)
      b = self.input_conv.bias.view(1, -1, 1, 1)
      with torch.no_grad():
        msum = self.mask_conv(mask)
      holes = msum == 0
      out = ((out - b) / msum.masked_fill(holes, 1.0) + b).masked_fill(holes, 0.0)
      return out, torch.ones_like(out).masked_fill(holes, 0.0)

  class NonLocalMask(nn.Module):
    def __init__(self, c, r=4):
      super().__init__()
      self.r, ic = r, c * r * r
      self.g, self.theta, self.phi = (nn.Conv2d(ic, ic, 1) for _ in range(3))
      self.W_s = nn.Conv2d(c, c, 1)
      self.gamma_s = nn.Parameter(torch.ones(1))
      self.getmask = nn.Sequential(nn.Conv2d(c, 16, 3, 1, 1), nn.ReLU(),
                                   nn.Conv2d(16, 1, 3, 1, 1))
      self.Pconv_1, self.Pconv_2, self.Pconv_3 = PartialConv(3), PartialConv(3), PartialConv(1)

    def forward(self, x, img):
      b, c, h, w = x.shape
      x1 = x.reshape(b, c * self.r**2, h // self.r, w // self.r)
      g = self.g(x1).flatten(2).permute(0, 2, 1)
      theta = self.theta(x1).flatten(2).permute(0, 2, 1)
      phi = self.phi(x1).flatten(2)
      y = torch.matmul(F.softmax(torch.matmul(theta, phi), -1), g)
      y = y.permute(0, 2, 1).contiguous().view(b, c, h, w)
      mask = torch.sigmoid(self.getmask(x + self.gamma_s * self.W_s(y))).repeat(1, 3, 1, 1)
      p, m = self.Pconv_1(img * mask, mask)
      p, m = self.Pconv_2(p, m)
      return self.Pconv_3(p, m)[0]

  class BranchCLS(nn.Module):
    def __init__(self, inp, k):
      super().__init__()
      self.fc = nn.Linear(18, k)
      self.bn = nn.BatchNorm1d(18)
      self.branch_cls = nn.Sequential(nn.Conv2d(inp, 32, 3, 1, 1), nn.ReLU(),
                                      nn.Conv2d(32, 18, 3, 1, 1), nn.ReLU())

    def forward(self, x):
      return self.fc(self.bn(self.branch_cls(x).mean((2, 3))))

  class SegNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.getmask = NonLocalMask(chans[0])
      widths = (chans[3], chans[3] + chans[2], sum(chans[1:]), sum(chans) + 1)
      for level, (inp, k) in enumerate(zip(widths, tuple(level_classes) + (num_classes,)), 1):
        setattr(self, f"branch_cls_level_{level}", BranchCLS(inp, k))

    def forward(self, feats, img):
      s1, s2, s3, s4 = feats
      pconv = up(self.getmask(s1, img).detach(), s1)
      c1 = self.branch_cls_level_1(s4)
      s3_in = torch.cat([up(s4, s3), s3], 1)
      c2 = self.branch_cls_level_2(s3_in)
      s2_in = torch.cat([up(s3_in, s2), s2], 1)
      c3 = self.branch_cls_level_3(s2_in)
      c4 = self.branch_cls_level_4(torch.cat([up(s2_in, s1), s1, pconv], 1))
      return c1, c2, c3, c4

  class Attributor(nn.Module):
    def __init__(self):
      super().__init__()
      self.FENet, self.SegNet = FENet(), SegNet()

    def forward(self, img):
      return self.SegNet(self.FENet(img), img)

  return Attributor()


def _randomise(net, seed=0):
  """Non-trivial BN affine parameters and running statistics (and torch's own conv init)."""
  import torch

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=gen))
        m.bias.copy_(0.2 * torch.randn(n, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    net.FENet.laplacian.conv_1x1[0].weight.mul_(0.5)
    net.SegNet.getmask.gamma_s.fill_(0.7)


def test_torch_restatement_has_the_official_layout():
  net = _torch_hifi_net()
  assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == _layout()
  trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
  assert (sum(p.numel() for p in net.parameters()), trainable) == (6_890_434, 6_890_245)


def test_imported_official_checkpoint_matches_torch():
  import torch

  torch.manual_seed(0)
  net = _torch_hifi_net()
  _randomise(net)
  net.eval()
  state = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
  imported = hifi_method.import_official(state, _official_config(), "/tmp")
  assert imported.notes == []

  x = np.random.default_rng(3).uniform(-1, 1, size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want = [t.numpy() for t in net(torch.from_numpy(x).permute(0, 3, 1, 2))]
  method = methods.get("hifi_net")(_official_config(), [str(i) for i in range(23)])

  def forward(v, x):  # one program: the method's prediction and the model's four levels
    logits, aux = method.model.apply(v, x, train=False)
    return method.predict(v, {"image": x}), list(aux["level_logits"]) + [logits]

  probs, levels = jax.jit(forward)(imported.variables, jnp.asarray(x))
  for ours, theirs in zip(levels, want):
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max(), (ours, theirs)
  np.testing.assert_allclose(np.asarray(probs), np.asarray(jax.nn.softmax(want[3], -1)),
                             atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The method on a tiny network.


def test_training_loss_masks_unknown_levels_and_leaves_the_mask_branch_alone():
  config = hifi_config.get_config("standard,runlocal")
  config.model.branch_channels = (4, 8, 8, 8)
  config.model.stem_width = 4
  method = methods.get("hifi_net")(config, ["a", "b", "c"])
  images = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
  key = lambda seed: jax.random.key(seed, impl="rbg")
  # Random values of the init's shapes: compiling ~400 initialisers costs more than the test.
  rng = np.random.default_rng(5)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), jnp.float32),
                           jax.eval_shape(lambda: method.init(key(0), images)))
  batch = {"image": images, "label": jnp.array([0, 1, 2, 1]),
           "levels": jnp.array([[0, -1, -1, -1], [0, -1, -1, -1], [1, 2, 5, 22],
                                [0, -1, -1, -1]], jnp.int32)}

  def loss_fn(params, rng):
    return method.loss({**variables, "params": params}, batch, rng, None)

  forward = jax.jit(loss_fn)
  loss, (state, measured) = forward(variables["params"], key(1))
  # Sum of the four levels, each finite: levels 2 and 3 see only the real image.
  np.testing.assert_allclose(float(loss), sum(float(measured[f"loss_level{i}"])
                                              for i in range(1, 5)), rtol=1e-5)
  assert all(np.isfinite(float(measured[f"loss_level{i}"])) for i in range(1, 5))
  assert "batch_stats" in state
  # Dropout is live in training: another rng, another loss.
  assert float(forward(variables["params"], key(2))[0]) != float(loss)

  # The official code detaches the localisation branch: no gradient reaches it.
  def of_mask_branch(mask_params):
    return loss_fn({**variables["params"], "getmask": mask_params}, key(1))[0]

  grads = jax.jit(jax.grad(of_mask_branch))(variables["params"]["getmask"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_configs():
  standard = hifi_config.get_config("standard")
  assert standard.model.level_classes == (2, 3, 6) and standard.num_epochs == 10
  assert standard.input.batch_size == 8 and standard.optimizer.learning_rate == 1e-3
  assert standard.input.transform == "resize(256)|central_crop(256)|normalize('half')"
  assert hifi_config.get_config("semantic1").num_epochs == 15
  official = hifi_config.get_config("semantic1,official")
  assert official.model.level_classes == (2, 4, 6) and official.num_epochs == 10
  for arg in ("standard", "standard,runlocal", "standard,minibench", "semantic2,official"):
    methods.get("hifi_net").check_config(hifi_config.get_config(arg))
  bad = hifi_config.get_config("standard")
  bad.model.widht = 3
  with pytest.raises(ValueError, match="config.model.widht"):
    methods.get("hifi_net").check_config(bad)
