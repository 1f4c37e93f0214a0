"""DnCNN: deepinv's DnCNN and KAIR's layouts, checked against torch references.

deepinv (installed) is the reference for its own layout. KAIR is not a package: its reference here
is a torch nn.Sequential rebuilt from cszn/KAIR models/network_dncnn.py and basicblock.py
(`B.conv` modes "CR"/"CBR"/"C" flattened by `B.sequential`, BatchNorm2d(momentum=0.9, eps=1e-4),
forward x - model(x)), which gives KAIR's key names (model.<i>.*) and arithmetic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models
from iab_jax.models import dncnn
from tests.models import harness
from tests.models.harness import (abstract, assert_close, assert_leaves_equal, assert_trees_close,
                                  flat, num_params, numpy_state, torch_forward)

SMALL = dict(depth=5, width=16)
DEEPINV_PARAMS = 3 * 64 * 9 + 64 + 18 * (64 * 64 * 9 + 64) + 64 * 3 * 9 + 3  # 668,227


init = functools.partial(harness.init, hw=(16, 16))


def deepinv_state(depth=20, width=64, channels=3, bias=True, seed=0):
  """A random deepinv DnCNN state dict, its keys and shapes written out by hand."""
  rng = np.random.default_rng(seed)
  shapes = {"in_conv.weight": (width, channels, 3, 3), "out_conv.weight": (channels, width, 3, 3)}
  shapes.update({f"conv_list.{i}.weight": (width, width, 3, 3) for i in range(depth - 2)})
  if bias:
    shapes.update({k.replace("weight", "bias"): s[:1] for k, s in list(shapes.items())})
  return {k: 0.1 * rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def kair_state(depth=17, width=64, channels=3, batch_norm=False, seed=0):
  rng = np.random.default_rng(seed)
  step = 3 if batch_norm else 2
  convs = {0: (width, channels)}
  convs.update({2 + step * i: (width, width) for i in range(depth - 2)})
  convs[2 + step * (depth - 2)] = (channels, width)
  state = {}
  for index, (cout, cin) in convs.items():
    state[f"model.{index}.weight"] = 0.1 * rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)
    state[f"model.{index}.bias"] = 0.1 * rng.standard_normal((cout,), dtype=np.float32)
  if batch_norm:
    for i in range(depth - 2):
      p = f"model.{3 + step * i}"
      state[f"{p}.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
      state[f"{p}.bias"] = rng.uniform(-0.2, 0.2, width).astype(np.float32)
      state[f"{p}.running_mean"] = rng.uniform(-0.1, 0.1, width).astype(np.float32)
      state[f"{p}.running_var"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
      state[f"{p}.num_batches_tracked"] = np.array(3, np.int64)
  return state


@pytest.fixture(scope="module")
def default():
  model = dncnn.Model()
  return model, init(model)


# ---------------------------------------------------------------------------------------------
# Architecture.


def test_registry_and_parameter_count(default):
  assert models.get("dncnn") is dncnn
  _, variables = default
  assert set(variables) == {"params"}
  assert num_params(variables) == DEEPINV_PARAMS
  params = variables["params"]
  assert sorted(params) == sorted(["in_conv", "out_conv"] + [f"conv_{i}" for i in range(18)])
  assert params["out_conv"]["kernel"].shape == (3, 3, 64, 3)
  bn = abstract(dncnn.Model(depth=17, batch_norm=True), (16, 16))
  assert sorted(bn) == ["batch_stats", "params"] and "bn_14" in bn["params"]
  # KAIR's DnCNN(nb=17, act_mode="BR"): 556,032 parameters (running statistics not counted).
  assert num_params(bn["params"]) == (
      3 * 64 * 9 + 64 + 15 * (64 * 64 * 9 + 64 + 2 * 64) + 64 * 3 * 9 + 3)


def test_initialisers_are_deepinvs(default):
  params = default[1]["params"]
  # kaiming_normal_(fan_in, a=0) weights; torch's uniform(+-1/sqrt(fan_in)) biases.
  k = np.asarray(params["conv_3"]["kernel"])
  assert k.std() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.03)
  assert np.abs(k).max() > 3.5 * k.std()
  for name, fan_in in (("in_conv", 27), ("conv_3", 576), ("out_conv", 576)):
    b = np.abs(np.asarray(params[name]["bias"]))
    assert b.max() <= 1 / np.sqrt(fan_in)
  assert np.abs(np.asarray(params["conv_3"]["bias"])).max() > 0.9 / 24


def test_outputs_and_aux(default):
  model, variables = default
  x = jax.random.uniform(jax.random.key(1), (2, 21, 34, 3))
  denoised, aux = model.apply(variables, x, train=False)
  assert denoised.shape == x.shape and denoised.dtype == jnp.float32
  assert aux["residual"].shape == x.shape and aux["residual"].dtype == jnp.float32
  assert aux["features"].shape == (2, 64) and aux["features"].dtype == jnp.float32
  np.testing.assert_allclose(denoised, x - aux["residual"], rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="num_classes must be 0"):
    dncnn.Model(num_classes=3).apply(variables, x, train=False)
  gray = dncnn.Model(channels=1, **SMALL)
  out, _ = gray.apply(init(gray), x[..., :1], train=False)
  assert out.shape == (2, 21, 34, 1)


def test_bfloat16_compute(default):
  model, variables = default
  x = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))
  _, ref = model.apply(variables, x, train=False)
  _, aux = dncnn.Model(dtype=jnp.bfloat16).apply(variables, x, train=False)
  assert aux["residual"].dtype == jnp.float32
  assert float(jnp.abs(aux["residual"] - ref["residual"]).max()) < (
      0.05 * float(jnp.abs(ref["residual"]).max()))


# ---------------------------------------------------------------------------------------------
# Converters and loading.


def test_from_deepinv_maps_and_negates_out_conv():
  state = deepinv_state(**SMALL)
  params = dncnn.from_deepinv(state, **SMALL)["params"]
  np.testing.assert_array_equal(params["in_conv"]["kernel"],
                                state["in_conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["conv_2"]["bias"], state["conv_list.2.bias"])
  np.testing.assert_array_equal(params["out_conv"]["kernel"],
                                -state["out_conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["out_conv"]["bias"], -state["out_conv.bias"])
  assert len(jax.tree.leaves(params)) == len(state)
  no_bias = dncnn.from_deepinv(deepinv_state(**SMALL, bias=False), **SMALL, bias=False)
  assert "bias" not in no_bias["params"]["conv_0"]


def test_from_kair_maps_both_layouts():
  state = kair_state(depth=4, width=8)
  params = dncnn.from_kair(state, depth=4, width=8)["params"]
  np.testing.assert_array_equal(params["conv_1"]["kernel"],
                                state["model.4.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["out_conv"]["bias"], state["model.6.bias"])
  state = kair_state(depth=4, width=8, batch_norm=True)
  variables = dncnn.from_kair(state, depth=4, width=8, batch_norm=True)
  np.testing.assert_array_equal(variables["params"]["conv_1"]["bias"], state["model.5.bias"])
  np.testing.assert_array_equal(variables["params"]["bn_1"]["scale"], state["model.6.weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn_0"]["var"],
                                state["model.3.running_var"])
  np.testing.assert_array_equal(variables["params"]["out_conv"]["bias"], state["model.8.bias"])


def test_converter_errors():
  state = deepinv_state(**SMALL)
  del state["conv_list.1.bias"]
  state["conv_list.9.bias"] = np.zeros(16, np.float32)
  with pytest.raises(ValueError, match=r"deepinv DnCNN\(depth=5, nf=16, bias=True\): missing keys "
                                       r"conv_list\.1\.bias; unexpected keys conv_list\.9\.bias"):
    dncnn.from_deepinv(state, **SMALL)
  # deepinv's default depth 20 is not KAIR's 17, nor is its layout KAIR's.
  with pytest.raises(ValueError, match=r"unexpected keys conv_list\.17\.bias"):
    dncnn.from_deepinv(deepinv_state(), depth=19)
  with pytest.raises(ValueError, match=r"KAIR DnCNN\(nb=20.*missing keys"):
    dncnn.from_kair(deepinv_state(), depth=20)
  state = deepinv_state(**SMALL)
  state["conv_list.0.weight"] = state["conv_list.0.weight"][:, :, :1, :1]
  with pytest.raises(ValueError, match=r"conv_list\.0\.weight: expected shape \(16, 16, 3, 3\)"):
    dncnn.from_deepinv(state, **SMALL)
  # A grayscale file for a colour model.
  with pytest.raises(ValueError, match=r"out_conv\.weight: expected shape \(3, 16, 3, 3\) .*got "
                                       r"\(1, 16, 3, 3\)"):
    dncnn.from_deepinv(deepinv_state(**SMALL, channels=1), **SMALL)
  state = deepinv_state(**SMALL)
  state["out_conv.bias"] = state["out_conv.bias"][:2]
  with pytest.raises(ValueError, match=r"out_conv\.bias: expected shape \(3,\)"):
    dncnn.from_deepinv(state, **SMALL)


def test_load_pretrained(tmp_path):
  deepinv_file, kair_file = tmp_path / "deepinv.safetensors", tmp_path / "kair.safetensors"
  save_file(deepinv_state(**SMALL), str(deepinv_file))
  save_file(kair_state(**SMALL, batch_norm=True), str(kair_file))
  model = dncnn.Model(**SMALL)
  assert_leaves_equal(dncnn.load_pretrained(init(model), deepinv_file),
                      dncnn.from_deepinv(deepinv_state(**SMALL), **SMALL))
  # The architecture is read off the (abstract) target, batch norm included.
  target = abstract(dncnn.Model(**SMALL, batch_norm=True), (16, 16))
  loaded = dncnn.load_pretrained(target, kair_file)  # the layout told by its keys
  expected = dncnn.from_kair(kair_state(**SMALL, batch_norm=True), **SMALL, batch_norm=True)
  assert flat(loaded).keys() == flat(expected).keys()
  assert_leaves_equal(loaded, expected)
  with pytest.raises(ValueError, match=r"KAIR DnCNN\(nb=5, nc=16, act_mode='R'\): missing keys"):
    dncnn.load_pretrained(init(model), kair_file, layout="kair")
  with pytest.raises(ValueError, match=r"deepinv DnCNN\(depth=5, nf=16, bias=True\): missing "):
    dncnn.load_pretrained(init(model), kair_file, layout="deepinv")
  with pytest.raises(ValueError, match="unknown DnCNN layout 'matlab'"):
    dncnn.load_pretrained(init(model), kair_file, layout="matlab")
  with pytest.raises(FileNotFoundError, match=r"none\.safetensors.*deepinv/dncnn"):
    dncnn.load_pretrained(init(model), tmp_path / "none.safetensors")


def test_checkpoints_entries():
  from iab_jax.data import transforms
  for name, entry in dncnn.CHECKPOINTS.items():
    assert {"source", "filename", "layout", "arch", "preprocess", "notes"} <= set(entry), name
    transforms.parse(entry["preprocess"])
  assert dncnn.CHECKPOINTS["dncnn_sigma2_color"]["arch"] == {}  # the defaults are deepinv's


# ---------------------------------------------------------------------------------------------
# Parity with the references.


def _torch_run(net, x, last_activation):
  """The reference's output and the spatial mean of its last hidden activation (our features)."""
  out, hidden = torch_forward(net, x, {"last": last_activation})
  return out, hidden["last"].mean(axis=(1, 2))


@pytest.mark.parametrize("arch", [dict(), dict(SMALL, bias=False, channels=1)])
def test_parity_with_deepinv(arch):
  torch = pytest.importorskip("torch")
  deepinv = pytest.importorskip("deepinv", reason="deepinv is the reference for its DnCNN")
  depth, width = arch.get("depth", 20), arch.get("width", 64)
  channels, bias = arch.get("channels", 3), arch.get("bias", True)
  torch.manual_seed(0)
  net = deepinv.models.DnCNN(in_channels=channels, out_channels=channels, depth=depth, bias=bias,
                             nf=width, pretrained=None).eval()
  if not arch:
    assert sum(p.numel() for p in net.parameters()) == DEEPINV_PARAMS
  variables = dncnn.from_deepinv(numpy_state(net), depth=depth, width=width, channels=channels,
                                 bias=bias)
  x = np.random.default_rng(0).uniform(0, 1, (2, 33, 40, channels)).astype(np.float32)
  ref, ref_features = _torch_run(net, x, net.nl_list[-1])
  denoised, aux = dncnn.Model(**arch).apply(variables, jnp.asarray(x), train=False)
  assert_close(denoised, ref, 1e-4)
  assert_close(aux["residual"], x - ref, 1e-4)
  assert_close(aux["features"], ref_features, 1e-4)


def kair_reference(torch, depth, width, channels, batch_norm):
  """KAIR's DnCNN(in_nc=out_nc=channels, nc=width, nb=depth, act_mode="BR" or "R")."""
  nn = torch.nn
  layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
  for _ in range(depth - 2):
    layers.append(nn.Conv2d(width, width, 3, padding=1))
    if batch_norm:
      layers.append(nn.BatchNorm2d(width, momentum=0.9, eps=1e-4, affine=True))
    layers.append(nn.ReLU(inplace=True))
  layers.append(nn.Conv2d(width, channels, 3, padding=1))

  class KairDnCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.model = nn.Sequential(*layers)

    def forward(self, x):
      return x - self.model(x)

  return KairDnCNN()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_parity_with_kair(batch_norm):
  torch = pytest.importorskip("torch")
  torch.manual_seed(1)
  depth, width = 6, 16
  net = kair_reference(torch, depth, width, 3, batch_norm)
  state = kair_state(depth, width, batch_norm=batch_norm, seed=1)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  net.eval()
  variables = jax.tree.map(jnp.asarray, dncnn.from_kair(state, depth=depth, width=width,
                                                        batch_norm=batch_norm))
  model = dncnn.Model(depth=depth, width=width, batch_norm=batch_norm)
  x = np.random.default_rng(1).uniform(0, 1, (2, 19, 24, 3)).astype(np.float32)
  ref, ref_features = _torch_run(net, x, net.model[-2])
  denoised, aux = model.apply(variables, jnp.asarray(x), train=False)
  assert_close(denoised, ref, 1e-4)
  assert_close(aux["residual"], x - ref, 1e-4)
  assert_close(aux["features"], ref_features, 1e-4)
  if batch_norm:
    # Training mode: batch statistics, and KAIR's momentum 0.9 (the new batch's weight in torch).
    net.train()
    ref, _ = _torch_run(net, x, net.model[-2])
    (denoised, _), updates = model.apply(variables, jnp.asarray(x), train=True,
                                         mutable=["batch_stats"])
    assert_close(denoised, ref, 1e-4)
    ref_stats = dncnn.from_kair(numpy_state(net), depth=depth, width=width, batch_norm=True)
    assert_trees_close(updates["batch_stats"], ref_stats["batch_stats"], 1e-4)
