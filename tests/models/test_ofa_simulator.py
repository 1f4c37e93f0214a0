"""OFA's stochastic simulator: its search space (counts against a brute-force enumeration, sampling
uniform and canonical), each decoder operation against torch or a NumPy loop, a whole decode
against a torch re-statement of the same path, the encoder's training mode, and the promise that
one compiled program serves every architecture.

A tiny simulator (widths 8/16, router 8, 4 groups, 16x16 images) with random variables filled in
from the abstract init, so that only two programs compile: the forward and a training step. XLA's
CPU backend spends most of that compiling the many small convs (every cell's MoKConv, in both
directions), whatever their size, so the tests compile without LLVM's expensive optimisations:
half the time, the same numbers to the tolerances below.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from iab_jax.models import ofa_simulator as sim

# Compile options: LLVM's cheapest pipeline (see the docstring).
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)
SMALL = dict(encoder_widths=(8, 16, 16), decoder_widths=(16, 8, 8), router_dim=8, groups=4)
N, HW = 2, 16


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


# ---------------------------------------------------------------------------------------------
# Search space.


def _canonical_level(values):
  up, cells, *slots = values
  slots = [slots[i * sim.CELL_LEN:(i + 1) * sim.CELL_LEN] if i < cells else [0] * sim.CELL_LEN
           for i in range(sim.MAX_CELLS)]
  return (up, cells, *itertools.chain(*slots))


def test_counts_match_a_brute_force_enumeration():
  choices = [range(len(sim.UPSAMPLERS)), range(1, sim.MAX_CELLS + 1)]
  choices += [range(len(sim.ACTIVATIONS)), range(len(sim.NORMS)), range(6)] * sim.MAX_CELLS
  distinct = {_canonical_level(v) for v in itertools.product(*choices)}
  assert len(distinct) == sim.count_per_level() == 11880
  assert len(sim.ORDERS) == 6 and len(set(sim.ORDERS)) == 6
  assert sim.count_architectures() == 11880 ** 3 + 11880 ** 2 + 11880
  assert 1.67e12 < sim.count_architectures() < 1.68e12


def test_sampling_is_canonical_and_uniform():
  from scipy import stats
  archs = np.asarray(jax.jit(sim.sample_architectures, static_argnums=1)(jax.random.key(0), 2000))
  assert archs.shape == (2000, sim.ARCH_LEN) and archs.dtype == np.int32
  for a in archs[:200]:  # canonical() in Python; the zeros of all 2000 are checked below
    np.testing.assert_array_equal(sim.canonical(a), a)

  def check_uniform(values, k, what):
    counts = np.bincount(values, minlength=k)
    assert counts.size == k and counts.min() > 0, f"{what}: a choice never appears: {counts}"
    expected = len(values) / k
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.9999, k - 1), f"{what}: {counts} not uniform"

  check_uniform(archs[:, 0], 3, "start")
  for level in range(sim.NUM_LEVELS):
    at = 1 + level * sim.LEVEL_LEN
    used = archs[:, 0] <= level
    assert np.all(archs[~used, at:at + sim.LEVEL_LEN] == 0)
    check_uniform(archs[used, at], len(sim.UPSAMPLERS), f"level {level} upsampler")
    check_uniform(archs[used, at + 1] - 1, sim.MAX_CELLS, f"level {level} cells")
    for cell in range(sim.MAX_CELLS):
      c = at + 2 + cell * sim.CELL_LEN
      cell_used = used & (archs[:, at + 1] > cell)
      assert np.all(archs[~cell_used, c:c + sim.CELL_LEN] == 0)
      check_uniform(archs[cell_used, c], len(sim.ACTIVATIONS), "activation")
      check_uniform(archs[cell_used, c + 1], len(sim.NORMS), "norm")
      check_uniform(archs[cell_used, c + 2], len(sim.ORDERS), "order")


def test_seeds_name_architectures_and_describe_reads():
  a = sim.architecture_from_seed(5)
  np.testing.assert_array_equal(a, sim.architecture_from_seed(5))
  assert not all(np.array_equal(a, sim.architecture_from_seed(s)) for s in range(6, 10))
  arch = np.zeros(sim.ARCH_LEN, np.int32)
  arch[0] = 2  # start H/2: level 3 only
  # level 3: bicubic, 2 cells: (gelu, group, norm->conv->act), (leaky_relu, batch, norm->act->conv)
  arch[17:25] = [2, 2, 1, 2, 4, 0, 0, 9]
  with pytest.raises(ValueError, match="order 9"):
    sim.canonical(arch)
  arch[24] = 5
  arch[1] = 3  # an unused level's entry: canonical zeroes it
  assert sim.canonical(arch)[1] == 0
  assert sim.describe(arch) == ("start H/2; level 3: bicubic, [norm=group -> conv -> act=gelu], "
                                "[norm=batch -> act=leaky_relu -> conv]")
  with pytest.raises(ValueError, match="25 integers"):
    sim.canonical([0, 1])


def test_cli(capsys):
  from iab_jax import ofa
  assert ofa.main(["--count"]) == 0
  out = capsys.readouterr().out
  assert "11,880" in out and "1,676,817,818,280" in out
  assert ofa.main(["--describe", "--seed", "5"]) == 0
  assert sim.describe(sim.architecture_from_seed(5)) in capsys.readouterr().out
  with pytest.raises(SystemExit) as exit_:
    ofa.main(["--sample", "3"])
  assert exit_.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Operations against torch and NumPy.


def _nchw(x):
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _torch_conv(p):
  import torch
  return (torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()),
          torch.from_numpy(np.asarray(p["bias"]).copy()))


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_variup_matches_torch_interpolate(mode):
  import torch.nn.functional as F
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  ours = {"bilinear": sim.upsample_bilinear, "nearest": sim.upsample_nearest,
          "bicubic": sim.upsample_bicubic}[mode](jnp.asarray(x))
  align = None if mode == "nearest" else False
  ref = _nhwc(F.interpolate(_nchw(x), scale_factor=2, mode=mode, align_corners=align))
  assert ours.shape == ref.shape and _rel(ours, ref) < 1e-6


def test_pixel_shuffle_matches_torch():
  import torch.nn.functional as F
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
  p = {"kernel": rng.normal(size=(3, 3, 3, 12)).astype(np.float32),
       "bias": rng.normal(size=(12,)).astype(np.float32)}
  ours = sim.pixel_shuffle(sim.conv2d(jnp.asarray(x), p))
  ref = _nhwc(F.pixel_shuffle(F.conv2d(_nchw(x), *_torch_conv(p), padding=1), 2))
  assert ours.shape == (2, 8, 10, 3) and _rel(ours, ref) < 1e-5


def test_norms_and_activations_match_torch():
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(3, 4, 5, 8)) * 2 + 1).astype(np.float32)
  p = {"scale": rng.normal(size=(8,)).astype(np.float32),
       "bias": rng.normal(size=(8,)).astype(np.float32)}
  w, b = torch.from_numpy(p["scale"]), torch.from_numpy(p["bias"])
  t = _nchw(x)
  assert _rel(sim.batch_norm(jnp.asarray(x), p),
              _nhwc(F.batch_norm(t, None, None, w, b, training=True, eps=1e-5))) < 1e-5
  assert _rel(sim.instance_norm(jnp.asarray(x)), _nhwc(F.instance_norm(t, eps=1e-5))) < 1e-5
  assert _rel(sim.group_norm(jnp.asarray(x), p, 4),
              _nhwc(F.group_norm(t, 4, w, b, eps=1e-5))) < 1e-5
  refs = {"leaky_relu": F.leaky_relu(t, 0.2), "gelu": F.gelu(t), "silu": F.silu(t)}
  for name in sim.ACTIVATIONS:
    assert _rel(sim.activation(name, jnp.asarray(x)), _nhwc(refs[name])) < 1e-6, name
  assert [sim.group_count(c, 32) for c in (128, 64, 32, 8, 12)] == [32, 32, 32, 8, 12]
  assert [sim.group_count(c, 4) for c in (16, 8, 6, 3)] == [4, 4, 3, 3]


@pytest.mark.parametrize("stride,k", [(1, 3), (2, 3), (1, 1)])
def test_conv_gradients_equal_autodiff(stride, k):
  # conv2d states its kernel gradient by hand (fast inside branches on CPU): it must be the same.
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 7, 8, 5)), jnp.float32)  # odd and even sizes
  kernel = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
  out_shape = jax.eval_shape(lambda: sim._conv(x, kernel, stride)).shape
  g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
  ours = jax.vjp(lambda x, w: sim._conv_in_branch(x, w, stride), x, kernel)[1](g)
  ref = jax.vjp(lambda x, w: sim._conv(x, w, stride), x, kernel)[1](g)
  for a, b in zip(ours, ref):
    assert a.shape == b.shape and _rel(a, b) < 1e-5


def _np_conv(x, kernel, bias, stride=1):
  # Direct loop over the 3x3 taps, torch's padding 1.
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  out = np.zeros((n, ho, wo, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      patch = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
      out += patch @ kernel[i, j]
  return out + bias


def _random_mok(rng, c_in, c_out, k, d):
  r = lambda *s: (rng.normal(size=s) / math.sqrt(s[-2] * (9 if len(s) > 2 else 1))).astype(
      np.float32)
  return {"kernels": r(k, 3, 3, c_in, c_out), "biases": rng.normal(size=(k, c_out)).astype(
      np.float32) * 0.1,
          "router_conv1": {"kernel": r(3, 3, c_in, d), "bias": np.full(d, 0.1, np.float32)},
          "router_conv2": {"kernel": r(3, 3, d, d), "bias": np.full(d, 0.1, np.float32)},
          "router_fc": {"kernel": r(d, d), "bias": np.full(d, 0.1, np.float32)},
          "proj": {"kernel": r(d, k * c_out), "bias": rng.normal(size=(k * c_out,)).astype(
              np.float32)}}


def test_mok_conv_matches_a_numpy_loop():
  rng = np.random.default_rng(3)
  n, c, k, d = 3, 5, 4, 6
  p = _random_mok(rng, c, c, k, d)
  h = rng.normal(size=(n, 8, 6, c)).astype(np.float32)
  lrelu = lambda v: np.where(v > 0, v, 0.2 * v)
  r = lrelu(_np_conv(h, p["router_conv1"]["kernel"], p["router_conv1"]["bias"], 2))
  r = lrelu(_np_conv(r, p["router_conv2"]["kernel"], p["router_conv2"]["bias"], 2))
  r = lrelu(r.mean(axis=(1, 2)) @ p["router_fc"]["kernel"] + p["router_fc"]["bias"])
  w = (r @ p["proj"]["kernel"] + p["proj"]["bias"]).reshape(n, k, c)
  ref = np.zeros((n, 8, 6, c))
  for s in range(n):
    for kk in range(k):
      y = _np_conv(h[s:s + 1], p["kernels"][kk], p["biases"][kk])[0]
      for ch in range(c):
        ref[s, :, :, ch] += w[s, kk, ch] * y[:, :, ch]
  assert _rel(sim.mok_conv(jax.tree.map(jnp.asarray, p), jnp.asarray(h)), ref) < 1e-5


# ---------------------------------------------------------------------------------------------
# The whole simulator (tiny), with random variables: no init program to compile.


@functools.lru_cache(maxsize=None)
def _model_and_variables():
  model = sim.Simulator(**SMALL)
  arch = jnp.zeros(sim.ARCH_LEN, jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((N, HW, HW, 3)), arch,
                                             train=False))
  rng = np.random.default_rng(0)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    name = path[-1]
    if name == "var":
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == "mean":
      value = rng.normal(size=leaf.shape) * 0.1
    elif name == "scale":
      value = 1 + 0.2 * rng.normal(size=leaf.shape)
    elif name in ("bias", "biases"):
      value = 0.1 * rng.normal(size=leaf.shape)
    else:  # kernels at torch's scale, uniform(+-1/sqrt(fan_in)); MoKConv's lead with K
      fan_in = np.prod(leaf.shape[1:-1] if name == "kernels" else leaf.shape[:-1])
      value = rng.uniform(-1, 1, leaf.shape) / math.sqrt(fan_in)
    flat[path] = jnp.asarray(value, jnp.float32)
  return model, traverse_util.unflatten_dict(flat)


_TRACES = {"apply": 0}


@functools.lru_cache(maxsize=None)
def _apply():
  model, _ = _model_and_variables()

  def apply(variables, x, arch):
    _TRACES["apply"] += 1
    recon, aux = model.apply(variables, x, arch, train=False)
    return recon, aux["features"]

  return jax.jit(apply, compiler_options=FAST_COMPILE)


def _images(seed=0):
  return jax.random.uniform(jax.random.key(seed), (N, HW, HW, 3), minval=-1, maxval=1)


def test_one_compilation_serves_every_architecture():
  _, variables = _model_and_variables()
  apply = _apply()
  x = _images()
  archs = np.asarray(sim.sample_architectures(jax.random.key(1), 100))
  outputs = [np.asarray(apply(variables, x, jnp.asarray(a))[0]) for a in archs]
  assert _TRACES["apply"] == 1 and apply._cache_size() == 1
  assert len({a.tobytes() for a in archs}) == 100
  assert all(o.shape == (N, HW, HW, 3) and np.all(np.isfinite(o)) for o in outputs)
  flat = np.stack([o.reshape(-1) for o in outputs])
  gaps = np.max(np.abs(flat[:, None] - flat[None]), axis=-1) + np.eye(100)
  assert gaps.min() > 1e-4, "two architectures gave the same reconstruction"


def _torch_decode(params, features, arch, groups):
  """The decoder path `arch` re-stated with torch ops on NCHW tensors (the authors' order)."""
  import torch
  import torch.nn.functional as F
  arch = sim.canonical(arch)
  t = lambda v: torch.from_numpy(np.asarray(v, np.float32).copy())
  conv = lambda x, p, stride=1: F.conv2d(x, *_torch_conv(p), stride=stride,
                                         padding=p["kernel"].shape[0] // 2)
  lrelu = lambda v: F.leaky_relu(v, 0.2)

  def mok(p, x):
    r = lrelu(conv(lrelu(conv(x, p["router_conv1"], 2)), p["router_conv2"], 2)).mean((2, 3))
    r = lrelu(r @ t(p["router_fc"]["kernel"]) + t(p["router_fc"]["bias"]))
    k, c = p["biases"].shape
    w = (r @ t(p["proj"]["kernel"]) + t(p["proj"]["bias"])).view(-1, k, c, 1, 1)
    outs = torch.stack([conv(x, {"kernel": p["kernels"][i], "bias": p["biases"][i]})
                        for i in range(k)], dim=1)
    return (outs * w).sum(dim=1)

  x = [features[3], features[1], features[0]][arch[0]]
  x = _nchw(x)
  for level in range(arch[0], sim.NUM_LEVELS):
    p = params[f"level{level}"]
    spec = arch[1 + level * sim.LEVEL_LEN: 1 + (level + 1) * sim.LEVEL_LEN]
    x = conv(x, p["conv_up"])
    up = sim.UPSAMPLERS[spec[0]]
    if up == "pixel_shuffle":
      x = F.pixel_shuffle(conv(x, p["pixel_shuffle"]), 2)
    else:
      align = None if up == "nearest" else False
      x = F.interpolate(x, scale_factor=2, mode=up, align_corners=align)
    h = x
    for cell in range(spec[1]):
      act, norm, order = spec[2 + 3 * cell: 5 + 3 * cell]
      pc = p[f"cell{cell}"]
      c = h.shape[1]
      for op in sim.ORDERS[order]:
        if op == "conv":
          h = mok(pc["mok"], h)
        elif op == "act":
          h = [lrelu, F.gelu, F.silu][act](h)
        elif sim.NORMS[norm] == "batch":
          h = F.batch_norm(h, None, None, t(pc["batch_norm"]["scale"]),
                           t(pc["batch_norm"]["bias"]), training=True, eps=1e-5)
        elif sim.NORMS[norm] == "instance":
          h = F.instance_norm(h, eps=1e-5)
        else:
          h = F.group_norm(h, sim.group_count(c, groups), t(pc["group_norm"]["scale"]),
                           t(pc["group_norm"]["bias"]), eps=1e-5)
    x = h + x
  return _nhwc(conv(x, params["out_conv"]))


def test_decode_matches_a_torch_restatement():
  _, variables = _model_and_variables()
  params = jax.tree.map(np.asarray, variables["params"]["decoder"])
  x = _images(1)
  archs = [sim.architecture_from_seed(s) for s in range(6)]
  # Two paths through every upsampler, activation, norm and order (level: upsampler, cells, then
  # per cell activation, norm, order).
  archs.append(np.array([0, 0, 2, 0, 1, 0, 1, 2, 1, 1, 2, 2, 0, 2, 0, 1, 3,
                         2, 2, 1, 0, 4, 2, 2, 5], np.int32))
  archs.append(np.array([0, 3, 1, 2, 1, 5, 0, 0, 0, 3, 1, 0, 2, 4, 0, 0, 0,
                         3, 2, 1, 1, 3, 0, 0, 2], np.int32))
  archs.append(np.array([2] + [0] * 16 + [1, 2, 2, 2, 1, 1, 0, 4], np.int32))  # from H/2
  model, _ = _model_and_variables()
  # The halves, as the extractor's trainer calls them: encode once, decode along many paths.
  encode = jax.jit(lambda v, x: model.apply(v, x, train=False, method=sim.Simulator.encode),
                   compiler_options=FAST_COMPILE)
  decode = jax.jit(lambda v, f, a: model.apply(v, f, a, method=sim.Simulator.decode),
                   compiler_options=FAST_COMPILE)
  features = encode(variables, x)
  starts = set()
  for arch in archs:
    arch = sim.canonical(arch)
    starts.add(int(arch[0]))
    recon, whole_features = _apply()(variables, x, jnp.asarray(arch))
    for ours, whole in zip(features, whole_features):
      np.testing.assert_allclose(ours, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(decode(variables, features, jnp.asarray(arch)), recon, rtol=1e-5,
                               atol=1e-6)
    ref = _torch_decode(params, [np.asarray(f) for f in features], arch, SMALL["groups"])
    assert _rel(recon, ref) < 1e-4, sim.describe(arch)
  assert starts == {0, 1, 2}


def _torch_encoder(params, stats, x):
  """The authors' encoder (encoder2.py) re-stated with torch ops in training mode; returns the
  features and the updated running statistics (torch's momentum 0.1, unbiased variance)."""
  import torch
  import torch.nn.functional as F
  t = lambda v: torch.from_numpy(np.asarray(v, np.float32).copy())
  conv = lambda h, p, stride=1: F.conv2d(h, *_torch_conv(p), stride=stride, padding=1)
  new_stats = {}

  def bn(h, name, p, s):
    mean, var = t(s["mean"]), t(s["var"])
    out = F.batch_norm(h, mean, var, t(p["scale"]), t(p["bias"]), training=True, momentum=0.1,
                       eps=1e-5)
    new_stats[name] = {"mean": mean.numpy(), "var": var.numpy()}
    return out

  def res(h, name):
    p, s = params[name], stats[name]
    y = F.silu(bn(conv(h, p["conv1"]), (name, "bn1"), p["bn1"], s["bn1"]))
    y = bn(conv(y, p["conv2"]), (name, "bn2"), p["bn2"], s["bn2"])
    return F.silu(h + y)

  h = F.silu(conv(_nchw(x), params["stem"]))
  features = []
  for i in range(3):
    h = res(conv(h, params[f"down{i}"], 2), f"res{i}")
    features.append(_nhwc(h))
  features.append(_nhwc(res(conv(h, params["final_conv"]), "final_res")))
  return features, new_stats


def test_training_step_updates_encoder_statistics_and_only_the_chosen_path_learns():
  model, variables = _model_and_variables()
  # start H/4: level 2 bilinear with one cell (gelu, instance, conv->act->norm); level 3 pixel
  # shuffle with two cells (silu, batch, act->conv->norm) and (leaky_relu, group, norm->act->conv).
  arch = np.zeros(sim.ARCH_LEN, np.int32)
  arch[0] = 1
  arch[9:14] = [0, 1, 1, 1, 0]
  arch[17:25] = [3, 2, 2, 0, 2, 0, 2, 5]
  arch = sim.canonical(arch)
  x = _images(2)
  target = jax.random.normal(jax.random.key(3), x.shape)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, stats, x):
    def loss(params):
      (recon, aux), new = model.apply({"params": params, "batch_stats": stats}, x,
                                      jnp.asarray(arch), train=True, mutable=["batch_stats"])
      return jnp.sum(recon * target), (aux["features"], new["batch_stats"])
    return jax.grad(loss, has_aux=True)(params)

  grads, (features, new_stats) = step(variables["params"], variables["batch_stats"], x)
  params = jax.tree.map(np.asarray, variables["params"])
  ref_features, ref_stats = _torch_encoder(params["encoder"],
                                           jax.tree.map(np.asarray,
                                                        variables["batch_stats"]["encoder"]),
                                           np.asarray(x))
  for ours, ref in zip(features, ref_features):
    assert _rel(ours, ref) < 1e-4
  for (block, bn), ref in ref_stats.items():
    ours = new_stats["encoder"][block][bn]
    old = variables["batch_stats"]["encoder"][block][bn]
    assert not np.allclose(ours["mean"], old["mean"])
    assert _rel(ours["mean"], ref["mean"]) < 1e-4 and _rel(ours["var"], ref["var"]) < 1e-4

  flat = {"/".join(k): np.abs(np.asarray(v)).max() for k, v in
          traverse_util.flatten_dict(grads).items()}
  zero = lambda prefix: all(v == 0 for k, v in flat.items() if k.startswith(prefix))
  nonzero = lambda prefix: all(v > 0 for k, v in flat.items() if k.startswith(prefix))
  assert zero("decoder/level0/")  # start H/4 skips level 1
  assert zero("decoder/level1/pixel_shuffle/") and zero("decoder/level1/cell1/")
  assert zero("decoder/level1/cell0/batch_norm/") and zero("decoder/level1/cell0/group_norm/")
  assert nonzero("decoder/level1/conv_up/") and nonzero("decoder/level1/cell0/mok/")
  assert nonzero("decoder/level2/pixel_shuffle/") and nonzero("decoder/level2/cell1/mok/")
  assert nonzero("decoder/level2/cell0/batch_norm/") and zero("decoder/level2/cell0/group_norm/")
  assert nonzero("decoder/level2/cell1/group_norm/") and zero("decoder/level2/cell1/batch_norm/")
  assert nonzero("decoder/out_conv/")
  # F2 and F3 are not used from H/4: the encoder's last level and final block do not learn.
  assert zero("encoder/down2/") and zero("encoder/res2/") and zero("encoder/final_res/")
  assert nonzero("encoder/res1/") and nonzero("encoder/stem/")


def test_parameter_count_at_full_size():
  # torch's layer sizes, counted independently: conv(k, in, out) with bias, BatchNorm 2 per channel.
  conv = lambda k, c_in, c_out: k * k * c_in * c_out + c_out
  res = lambda c: 2 * (conv(3, c, c) + 2 * c)
  encoder = (conv(3, 3, 64) + conv(3, 64, 64) + res(64) + conv(3, 64, 128) + res(128)
             + conv(3, 128, 256) + res(256) + conv(3, 256, 256) + res(256))
  mok = lambda c, k=4, d=256: (k * conv(3, c, c) + conv(3, c, d) + conv(3, d, d) + conv(1, d, d)
                               + conv(1, d, k * c))
  level = lambda c_in, c: conv(1, c_in, c) + conv(3, c, 4 * c) + 2 * (mok(c) + 4 * c)
  decoder = level(256, 128) + level(128, 64) + level(64, 32) + conv(3, 32, 3)
  model = sim.Simulator()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                             jnp.zeros(sim.ARCH_LEN, jnp.int32), train=False))
  count = lambda tree: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))
  assert count(shapes["params"]["encoder"]) == encoder == 3_729_984
  assert count(shapes["params"]["decoder"]) == decoder == 7_800_515
