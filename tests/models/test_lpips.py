"""LPIPS: the lpips package's distance (v0.1 weights), checked against the package itself.

The reference is lpips.LPIPS(pretrained=True, pnet_rand=True): the real lin weights shipped in the
package and a randomly initialised torchvision backbone (nothing to download), whose weights are
copied into ours. Tests needing torch/lpips skip where they do not import.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax.models import lpips as jl
from iab_jax.models import alexnet, vgg
from tests.models.harness import assert_close, assert_each_close, nchw, numpy_state

LIN_SHAPES = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
BACKBONE_PARAMS = {"vgg": 14_714_688, "alex": 2_469_696}  # torchvision's `features`


def init(net):
  z = jnp.zeros((1, 64, 64, 3))
  return jl.LPIPS(net=net).init(jax.random.key(0, impl="rbg"), z, z)


def lin_state(net, seed=0):
  rng = np.random.default_rng(seed)
  return {f"lin{k}.model.1.weight": rng.uniform(0, 1, (1, c, 1, 1)).astype(np.float32)
          for k, c in enumerate(LIN_SHAPES[net])}


def backbone_state(net, seed=0, prefix="features."):
  """Random torchvision `features` tensors, keys and shapes written out by hand."""
  rng = np.random.default_rng(seed)
  if net == "vgg":
    convs, index, cin = {}, 0, 3
    for widths in vgg.VGG16_STAGES:
      for w in widths:
        convs[index], index, cin = (w, cin, 3), index + 2, w
      index += 1
  else:
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3),
             10: (256, 256, 3)}
  state = {}
  for index, (cout, cin, k) in convs.items():
    state[f"{prefix}{index}.weight"] = rng.standard_normal((cout, cin, k, k), dtype=np.float32)
    state[f"{prefix}{index}.bias"] = rng.standard_normal((cout,), dtype=np.float32)
  return state


# ---------------------------------------------------------------------------------------------
# Module.


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_parameters(net):
  shapes = jax.eval_shape(lambda: init(net))
  params = shapes["params"]
  assert set(shapes) == {"params"}
  assert sorted(params) == ["features"] + [f"lin{k}" for k in range(5)]
  assert sum(x.size for x in jax.tree.leaves(params["features"])) == BACKBONE_PARAMS[net]
  for k, c in enumerate(LIN_SHAPES[net]):
    assert params[f"lin{k}"]["kernel"].shape == (1, 1, c, 1)
  converted = jl.from_lpips(backbone_state(net), lin_state(net), net)
  assert jax.tree.map(np.shape, converted) == jax.tree.map(lambda x: x.shape, shapes)


def test_distance_properties():
  variables = jl.from_lpips(backbone_state("alex"), lin_state("alex"), "alex")
  model = jl.LPIPS(net="alex")
  rng = np.random.default_rng(0)
  x, y = (jnp.asarray(rng.uniform(-1, 1, (2, 64, 64, 3)), jnp.float32) for _ in range(2))
  d_xy = model.apply(variables, x, y)
  assert d_xy.shape == (2,) and d_xy.dtype == jnp.float32 and bool(jnp.all(d_xy > 0))
  np.testing.assert_allclose(model.apply(variables, y, x), d_xy, rtol=1e-5)
  np.testing.assert_array_equal(model.apply(variables, x, x), 0)
  with pytest.raises(ValueError, match="images of one shape"):
    model.apply(variables, x, y[:, :32])
  with pytest.raises(ValueError, match="unknown LPIPS backbone 'squeeze'"):
    jl.LPIPS(net="squeeze").apply(variables, x, y)


def test_unit_normalize_matches_the_package_and_has_finite_gradients():
  f = np.random.default_rng(0).standard_normal((2, 3, 4, 8)).astype(np.float32)
  f[0, 1, 2] = 0.0  # a position where every channel is zero (common after ReLU)
  expected = f / (np.sqrt((f.astype(np.float64) ** 2).sum(-1, keepdims=True)) + 1e-10)
  np.testing.assert_allclose(jl._unit_normalize(jnp.asarray(f)), expected, rtol=1e-6, atol=1e-7)
  grad = jax.grad(lambda a: jnp.sum(jl._unit_normalize(a) * jnp.arange(8.0)))(jnp.asarray(f))
  assert bool(jnp.all(jnp.isfinite(grad)))


# ---------------------------------------------------------------------------------------------
# Converters and loading.


def test_from_lpips_reads_every_backbone_layout():
  torchvision = backbone_state("vgg")
  expected = jl.from_lpips(torchvision, lin_state("vgg"), "vgg")
  # lpips.LPIPS's own names: net.slice<k>.<torchvision index>.
  slices = {}
  for key, value in torchvision.items():
    index = int(key.split(".")[1])
    k = 1 + sum(index >= start for start in (4, 9, 16, 23))
    slices[f"net.slice{k}.{key[len('features.'):]}"] = value
  # A classifier checkpoint's head (torchvision's or timm's) is ignored.
  with_head = dict(torchvision, **{"classifier.0.weight": np.zeros((2, 2), np.float32),
                                   "pre_logits.fc1.weight": np.zeros((2, 2, 7, 7), np.float32),
                                   "head.fc.bias": np.zeros(3, np.float32)})
  for state in (slices, with_head):
    got = jl.from_lpips(state, lin_state("vgg"), "vgg")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)
  params = expected["params"]
  np.testing.assert_array_equal(params["features"]["conv3_3"]["kernel"],
                                torchvision["features.14.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["lin2"]["kernel"][0, 0, :, 0],
                                lin_state("vgg")["lin2.model.1.weight"][0, :, 0, 0])


def test_from_lpips_errors():
  lin = lin_state("alex")
  del lin["lin4.model.1.weight"]
  with pytest.raises(ValueError, match=r"LPIPS-alex lin layers .*missing keys "
                                       r"lin4\.model\.1\.weight"):
    jl.from_lpips(backbone_state("alex"), lin, "alex")
  with pytest.raises(ValueError, match=r"lin1\.model\.1\.weight: expected shape \(1, 192, 1, 1\)"):
    # vgg's lin weights are not alexnet's
    jl.from_lpips(backbone_state("alex"), lin_state("vgg"), "alex")
  state = backbone_state("alex")
  state["features.1.weight"] = state.pop("features.0.weight")
  with pytest.raises(ValueError, match=r"missing keys features\.0\.weight; unexpected keys "
                                       r"features\.1\.weight"):
    jl.from_lpips(state, lin_state("alex"), "alex")
  with pytest.raises(ValueError, match=r"LPIPS-vgg backbone \(VGG-16\).*missing keys"):
    jl.from_lpips(backbone_state("alex"), lin_state("vgg"), "vgg")
  state = backbone_state("alex")
  state["features.3.bias"] = state["features.3.bias"][:10]
  with pytest.raises(ValueError, match=r"features\.3\.bias: expected shape \(192,\)"):
    jl.from_lpips(state, lin_state("alex"), "alex")
  with pytest.raises(ValueError, match="unknown LPIPS backbone 'squeeze'"):
    jl.from_lpips({}, {}, "squeeze")


def test_load_pretrained(tmp_path):
  backbone, lin = tmp_path / "alexnet.safetensors", tmp_path / "alex_lin.safetensors"
  state = backbone_state("alex")
  state["classifier.6.bias"] = np.zeros(1000, np.float32)  # a classifier file: head ignored
  save_file(state, str(backbone))
  save_file(lin_state("alex"), str(lin))
  abstract = jax.eval_shape(lambda: init("alex"))
  loaded = jl.load_pretrained(abstract, backbone, lin, net="alex")
  expected = jl.from_lpips(state, lin_state("alex"), "alex")
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match=r"missing\.safetensors.*LPIPS-alex lin layers.*"
                                              r"lpips/weights/v0\.1/alex\.pth"):
    jl.load_pretrained(abstract, backbone, tmp_path / "missing.safetensors", net="alex")
  with pytest.raises(FileNotFoundError, match=r"LPIPS-vgg backbone.*timm/vgg16\.tv_in1k"):
    jl.load_pretrained(abstract, tmp_path / "missing.safetensors", lin, net="vgg")


def test_checkpoints_entries():
  from iab_jax.data import transforms
  assert set(jl.CHECKPOINTS) == {"lpips_vgg", "lpips_alex"}
  for entry in jl.CHECKPOINTS.values():
    transforms.parse(entry["preprocess"])
    jl.LPIPS(**entry["arch"])
  assert jl.CHECKPOINTS["lpips_vgg"]["source"] == vgg.CHECKPOINTS["vgg16.tv_in1k"]["source"]
  assert jl.CHECKPOINTS["lpips_alex"]["source"] == alexnet.CHECKPOINTS["alexnet.tv_in1k"]["source"]


# ---------------------------------------------------------------------------------------------
# Parity with the lpips package.


@pytest.fixture(scope="module", params=["vgg", "alex"])
def reference(request):
  torch = pytest.importorskip("torch")
  lpips = pytest.importorskip("lpips", reason="the lpips package is the reference for LPIPS")
  net = request.param
  torch.manual_seed(0)
  with warnings.catch_warnings():  # lpips passes torchvision its deprecated `pretrained`
    warnings.simplefilter("ignore", UserWarning)
    ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
  # The real lin weights, as shipped in the package (a pickle: loaded with weights_only).
  path = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth")
  lin = {k: v.numpy() for k, v in
         torch.load(path, map_location="cpu", weights_only=True).items()}
  state = numpy_state(ref)
  for key, value in lin.items():  # the reference did load them
    np.testing.assert_array_equal(state[key], value)
  backbone = {k: v for k, v in state.items() if k.startswith("net.")}
  variables = jax.tree.map(jnp.asarray, jl.from_lpips(backbone, lin, net))
  return torch, net, ref, state, variables


def test_scaling_constants_are_the_packages(reference):
  _, _, _, state, _ = reference
  np.testing.assert_array_equal(state["scaling_layer.shift"].reshape(3), jl.SHIFT)
  np.testing.assert_array_equal(state["scaling_layer.scale"].reshape(3), jl.SCALE)


def test_backbone_parameter_count_is_the_packages(reference):
  _, net, ref, _, variables = reference
  assert sum(p.numel() for p in ref.net.parameters()) == BACKBONE_PARAMS[net]
  assert sum(p.numel() for p in ref.lins.parameters()) == sum(LIN_SHAPES[net])
  assert sum(x.size for x in jax.tree.leaves(variables)) == (
      BACKBONE_PARAMS[net] + sum(LIN_SHAPES[net]))


@pytest.mark.parametrize("hw", [(64, 64), (67, 45)])
def test_parity_with_the_lpips_package(reference, hw):
  torch, net, ref, _, variables = reference
  rng = np.random.default_rng(hw[1])
  x = rng.uniform(-1, 1, (3, *hw, 3)).astype(np.float32)
  # Pairs from near-identical to unrelated.
  noise = rng.uniform(-1, 1, x.shape).astype(np.float32)
  y = np.clip(x + np.array([0.05, 0.5, 2.0], np.float32)[:, None, None, None] * noise, -1, 1)
  with torch.no_grad():
    expected = ref(nchw(x), nchw(y)).numpy().reshape(-1)
    ref_stages = ref.net(ref.scaling_layer(nchw(x)))
  got = jax.jit(jl.LPIPS(net=net).apply)(variables, jnp.asarray(x), jnp.asarray(y))
  assert_close(got, expected, 1e-4)
  assert np.all(np.diff(expected) > 0)  # the pairs do span a range of distances

  # The backbone's five features on the scaled input.
  features = vgg.Features() if net == "vgg" else alexnet.Features()
  _, stages = features.apply({"params": variables["params"]["features"]},
                             (jnp.asarray(x) - jl.SHIFT) / jl.SCALE)
  assert len(stages) == 5
  assert_each_close(stages, [t.numpy().transpose(0, 2, 3, 1) for t in ref_stages], 1e-4)
