"""OFA's fingerprint extractor: Corvi's denoiser, residual and spectrum, the ResNet-50, the heads.

The references: numpy.fft for the spectrum; for Corvi et al.'s DnCNN a torch nn.Sequential built
here the way GRIP's make_net builds it (conv with bias + ReLU, then per middle layer a conv without
bias, BatchNorm2d(momentum=0.1, eps=1e-5) and ReLU, then a linear conv with bias; padding 0), whose
state-dict keys are those of model_best.th (<i>.weight ...); the residual as OFA's img2noise
computes it, network((clamp(x) + 1) / 2) / 256; torch nn.Sequential MLPs for the heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import models, weights
from iab_jax.models import dncnn, ofa_extractor, resnet
from tests.models import harness
from tests.models.harness import (abstract, assert_close, assert_leaves_equal, assert_trees_close,
                                  flat, num_params, numpy_state, torch_forward)

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8, embed_dim=16)
# torchvision's resnet50 (25,557,032) without its fc (2048 * 1000 + 1000), plus Linear(2048, 128).
OFA_PARAMS = 25_557_032 - (2048 * 1000 + 1000) + 2048 * 128 + 128  # 23,770,304
CORVI_PARAMS = 558_403  # sum over model_best.th's network without running statistics


def corvi_state(depth=17, width=64, channels=3, seed=0):
  """A random state dict with the keys and shapes of GRIP's model_best.th["network"], by hand."""
  rng = np.random.default_rng(seed)
  state = {"0.weight": 0.1 * rng.standard_normal((width, channels, 3, 3)),
           "0.bias": 0.1 * rng.standard_normal(width)}
  for i in range(depth - 2):
    state[f"{3 * i + 2}.weight"] = 0.1 * rng.standard_normal((width, width, 3, 3))
    bn = 3 * i + 3
    state[f"{bn}.weight"] = rng.uniform(0.5, 1.5, width)
    state[f"{bn}.bias"] = rng.uniform(-0.2, 0.2, width)
    state[f"{bn}.running_mean"] = rng.uniform(-0.1, 0.1, width)
    state[f"{bn}.running_var"] = rng.uniform(0.5, 1.5, width)
  last = 3 * (depth - 2) + 2
  state[f"{last}.weight"] = 0.1 * rng.standard_normal((channels, width, 3, 3))
  state[f"{last}.bias"] = 0.1 * rng.standard_normal(channels)
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  for i in range(depth - 2):
    state[f"{3 * i + 3}.num_batches_tracked"] = np.array(7, np.int64)
  return state


def corvi_reference(torch, depth=17, width=64, channels=3):
  """GRIP's make_net(3, [3] * depth, [width] * (depth - 1) + [3], bns on the middle layers,
  relu and a last linear layer, bn_momentum=0.1, padding=0), written out."""
  nn = torch.nn
  layers = [nn.Conv2d(channels, width, 3, padding=0, bias=True), nn.ReLU(inplace=True)]
  for _ in range(depth - 2):
    layers += [nn.Conv2d(width, width, 3, padding=0, bias=False),
               nn.BatchNorm2d(width, momentum=0.1), nn.ReLU(inplace=True)]
  layers.append(nn.Conv2d(width, channels, 3, padding=0, bias=True))
  return nn.Sequential(*layers)


def _loaded_reference(torch, state, depth, width):
  net = corvi_reference(torch, depth, width)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return net.eval()


# ---------------------------------------------------------------------------------------------
# Spectrum and residual.


def test_spectrum_is_log1p_abs_fft2_per_channel():
  r = np.random.default_rng(0).standard_normal((2, 10, 13, 3)).astype(np.float32) / 256
  expected = np.log1p(np.abs(np.fft.fft2(r.astype(np.float64), axes=(1, 2))))
  got = ofa_extractor.spectrum(jnp.asarray(r))
  assert got.shape == r.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # No fftshift: the DC term (the channel's sum) is at [0, 0].
  np.testing.assert_allclose(got[:, 0, 0], np.log1p(np.abs(r.sum(axis=(1, 2)))), rtol=1e-5)


def test_corvi_layout_and_output_convention():
  """256 -> 222 through 17 valid convs; the parameter count of model_best.th; and the convention:
  the last conv's raw output is aux["residual"], the denoised image x[17:-17] - output / 256."""
  model = ofa_extractor.denoiser()
  assert (model.depth, model.padding, model.residual_scale) == (17, 0, 256.0)
  variables = abstract(model, (64, 64))
  assert num_params(variables["params"]) == CORVI_PARAMS
  assert "bias" not in variables["params"]["conv_0"] and "bias" in variables["params"]["in_conv"]
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  denoised, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert denoised.shape == aux["residual"].shape == (1, 222, 222, 3)
  with pytest.raises(ValueError, match="leaves nothing"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 34, 40, 3)), train=False), variables)
  with pytest.raises(ValueError, match="padding must be"):
    dncnn.Model(padding=2).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


@pytest.fixture(scope="module")
def corvi_full():
  """The full-size layout (17 layers, 64 features) with random weights, and its torch reference."""
  import torch
  state = corvi_state(seed=3)
  net = _loaded_reference(torch, state, 17, 64)
  variables = jax.tree.map(jnp.asarray, dncnn.from_corvi(state))
  return state, net, variables


def test_from_corvi_full_layout_matches_the_torch_network(corvi_full):
  state, net, variables = corvi_full
  model = ofa_extractor.denoiser()
  assert flat(variables).keys() == flat(abstract(model, (40, 40))).keys()
  x = np.random.default_rng(4).uniform(0, 1, (1, 40, 42, 3)).astype(np.float32)
  ref, _ = torch_forward(net, x)
  denoised, aux = harness.jit_apply(model, variables, x, train=False)
  assert ref.shape == (1, 6, 8, 3)
  assert_close(aux["residual"], ref, 1e-4)
  assert_close(denoised, x[:, 17:-17, 17:-17] - ref / 256, 1e-5)


def test_residual_is_ofas_img2noise(corvi_full):
  """residual(x) = network((clamp(x, -1, 1) + 1) / 2) / 256, no gradient through the denoiser."""
  _, net, variables = corvi_full
  forward = ofa_extractor.denoiser_forward(ofa_extractor.denoiser())
  x = np.random.default_rng(5).uniform(-1.2, 1.2, (2, 38, 38, 3)).astype(np.float32)
  ref, _ = torch_forward(net, (np.clip(x, -1, 1) + 1) / 2)
  r = jax.jit(ofa_extractor.residual, static_argnums=0)(forward, variables, jnp.asarray(x))
  assert r.shape == (2, 4, 4, 3)
  assert_close(r, ref / 256, 1e-4)
  # Frozen: no gradient reaches the denoiser's weights (nor its input).
  tiny = ofa_extractor.denoiser(depth=2, width=4)
  tiny_vars = harness.init(tiny, (8, 8))
  grads = jax.grad(lambda v, x: jnp.sum(ofa_extractor.residual(
      ofa_extractor.denoiser_forward(tiny), v, x)), argnums=(0, 1))(tiny_vars, x[:, :8, :8])
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("train", [False, True])
def test_small_valid_dncnn_matches_torch(train):
  """A 5-layer Corvi-layout net: eval mode, and train mode with torch's momentum-0.1 statistics."""
  import torch
  depth, width = 5, 8
  state = corvi_state(depth, width, seed=1)
  net = _loaded_reference(torch, state, depth, width)
  model = ofa_extractor.denoiser(depth=depth, width=width)
  variables = jax.tree.map(jnp.asarray, dncnn.from_corvi(state, depth=depth, width=width))
  x = np.random.default_rng(2).uniform(0, 1, (2, 17, 15, 3)).astype(np.float32)
  if not train:
    ref, hidden = torch_forward(net, x, {"last": net[-2]})
    denoised, aux = model.apply(variables, jnp.asarray(x), train=False)
    assert_close(aux["features"], hidden["last"].mean(axis=(1, 2)), 1e-4)
  else:
    net.train()
    ref, _ = torch_forward(net, x)
    (denoised, aux), updates = model.apply(variables, jnp.asarray(x), train=True,
                                           mutable=["batch_stats"])
    expected = dncnn.from_corvi(numpy_state(net), depth=depth, width=width)["batch_stats"]
    assert_trees_close(updates["batch_stats"], expected, 1e-4)
  assert ref.shape == (2, 7, 5, 3)
  assert_close(aux["residual"], ref, 1e-4)
  assert_close(denoised, x[:, 5:-5, 5:-5] - ref / 256, 1e-5)


def test_corvi_converter_errors_and_load_pretrained(tmp_path):
  depth, width = 4, 8
  state = corvi_state(depth, width)
  bad = dict(state)
  del bad["2.weight"]
  with pytest.raises(ValueError,
                     match=r"Corvi DnCNN\(depth=4, features=8\): missing keys 2\.weight"):
    dncnn.from_corvi(bad, depth=depth, width=width)
  bad = dict(state, **{"2.bias": np.zeros(width, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected keys 2\.bias"):
    dncnn.from_corvi(bad, depth=depth, width=width)
  bad = dict(state, **{"3.running_var": np.ones(width + 1, np.float32)})
  with pytest.raises(ValueError, match=r"3\.running_var: expected shape \(8,\)"):
    dncnn.from_corvi(bad, depth=depth, width=width)
  path = tmp_path / "model_best.safetensors"
  save_file(state, str(path))
  target = abstract(ofa_extractor.denoiser(depth=depth, width=width), (16, 16))
  loaded = dncnn.load_pretrained(target, path)  # the layout told by its "0.weight" key
  expected = dncnn.from_corvi(state, depth=depth, width=width)
  assert flat(loaded).keys() == flat(expected).keys()
  assert_leaves_equal(loaded, expected)


def test_corvi_checkpoint_entry():
  entry = weights.get(ofa_extractor.DENOISER)
  assert entry.module == "dncnn" and entry.local_filename == "model_best.safetensors"
  assert entry.url.startswith("https://github.com/grip-unina/SyntheticImagesAnalysis/raw/")
  assert entry.arch == dict(depth=17, width=64, padding=0, batch_norm=True, bn_conv_bias=False,
                            bn_epsilon=1e-5, bn_momentum=0.9, residual_scale=256.0)


# ---------------------------------------------------------------------------------------------
# The extractor network and its heads.


def test_registry_and_parameter_count():
  assert models.get("ofa_extractor") is ofa_extractor
  variables = abstract(ofa_extractor.Model(), (32, 32))
  assert num_params(variables["params"]) == OFA_PARAMS
  assert set(variables["params"]) == {"backbone", "embed"}
  assert variables["params"]["embed"]["kernel"].shape == (2048, 128)
  backbone = abstract(resnet.Model(num_classes=0), (32, 32))
  assert flat(variables["params"]["backbone"]).keys() == flat(backbone["params"]).keys()
  with_head = abstract(ofa_extractor.Model(num_classes=5), (32, 32))
  assert num_params(with_head["params"]) == OFA_PARAMS + 128 * 5 + 5
  assert ofa_extractor.HEAD in with_head["params"]


@pytest.fixture(scope="module")
def tiny():
  model = ofa_extractor.Model(**TINY)
  return model, harness.init_once(model, (32, 32))


def test_outputs(tiny):
  model, variables = tiny
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 3, (2, 32, 32, 3)), jnp.float32)
  z, aux = harness.jit_apply(model, variables, x, train=False)
  assert z.shape == (2, 16) and z.dtype == jnp.float32
  np.testing.assert_array_equal(aux["features"], z)
  assert aux["pooled"].shape == (2, 32 * 8)
  (_, _), updates = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  assert set(updates["batch_stats"]) == {"backbone"}
  head = ofa_extractor.Model(num_classes=3, **TINY)
  logits, aux = jax.eval_shape(lambda v: head.apply(v, x, train=False), abstract(head, (32, 32)))
  assert logits.shape == (2, 3) and aux["features"].shape == (2, 16)


def test_heads_match_torch_mlps():
  import torch
  nn = torch.nn
  torch.manual_seed(0)
  d, hidden = 6, 5

  def mlp(fan_in):
    return nn.Sequential(nn.Linear(fan_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                         nn.LeakyReLU(0.2), nn.Linear(hidden, 1)).eval()

  def params_of(net):
    sd = numpy_state(net)
    return {"params": {f"fc{k + 1}": {"kernel": sd[f"{i}.weight"].T, "bias": sd[f"{i}.bias"]}
                       for k, i in enumerate((0, 2, 4))}}

  za, zb = np.random.default_rng(1).standard_normal((2, 7, d)).astype(np.float32)
  pair, real = mlp(2 * d), mlp(d)
  with torch.no_grad():
    ref_pair = pair(torch.cat([torch.from_numpy(za), torch.from_numpy(zb)], 1))[:, 0].numpy()
    ref_real = real(torch.from_numpy(za))[:, 0].numpy()
  got_pair = ofa_extractor.PairHead(hidden).apply(params_of(pair), za, zb)
  got_real = ofa_extractor.RealHead(hidden).apply(params_of(real), za)
  assert got_pair.shape == got_real.shape == (7,)
  assert_close(got_pair, ref_pair, 1e-5)
  assert_close(got_real, ref_real, 1e-5)
  # Default sizes: 256 -> 128 -> 128 -> 1 and 128 -> 128 -> 128 -> 1.
  z = jnp.zeros((1, 128))
  pair_vars = jax.eval_shape(lambda: ofa_extractor.PairHead().init(jax.random.key(0), z, z))
  real_vars = jax.eval_shape(lambda: ofa_extractor.RealHead().init(jax.random.key(0), z))
  assert num_params(pair_vars) == 256 * 128 + 128 + 128 * 128 + 128 + 128 + 1
  assert num_params(real_vars) == 128 * 128 + 128 + 128 * 128 + 128 + 128 + 1


def test_load_pretrained_fills_the_backbone_not_the_embedding(tiny, tmp_path):
  from tests.models.test_resnet import torchvision_state

  state = torchvision_state(stage_sizes=(1, 1, 1, 1), width=8, num_classes=10)
  path = tmp_path / "resnet.safetensors"
  save_file(state, str(path))
  model, variables = tiny
  loaded = ofa_extractor.load_pretrained(variables, path)
  expected = resnet.from_torchvision(state, stage_sizes=(1, 1, 1, 1))
  del expected["params"]["fc"]
  assert_leaves_equal({c: loaded[c]["backbone"] for c in expected}, expected)
  assert_leaves_equal(loaded["params"]["embed"], variables["params"]["embed"])
  # Abstract targets work too (the trainer loads into jax.eval_shape's structure).
  from_abstract = ofa_extractor.load_pretrained(abstract(model, (32, 32)), path)
  assert_leaves_equal({c: from_abstract[c]["backbone"] for c in expected}, expected)
