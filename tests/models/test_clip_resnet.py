"""CLIP's modified ResNet against open_clip's ModifiedResNet, on reduced configurations.

The parity tests build open_clip's network with random weights and batch-norm statistics, save its
state dict with safetensors, load it through our converter and compare the embedding and every
stage in float32; they skip when open_clip does not import. The rest runs on state dicts written
here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax.data import transforms
from iab_jax.models import clip_resnet
from tests.models.harness import (abstract, assert_close, assert_each_close, assert_leaves_equal,
                                  assert_trees_close, batch_norm_shapes, bottleneck_shapes, flat,
                                  init_once, jit_apply, nchw, num_params, numpy_state,
                                  random_state_dict, randomise_batch_norms)

# Reduced configurations of the same architecture (64 px, a 2x2 final map); DEEP also has blocks
# without a projection shortcut.
TINY = dict(layers=(1, 1, 1, 1), width=16, embed_dim=32, heads=2, image_size=64)
DEEP = dict(layers=(2, 1, 1, 2), width=16, embed_dim=32, heads=2, image_size=64)

RN50X16_PARAMS = 167_328_912  # open_clip CLIP('RN50x16').visual, parameters only
RN50X16_BN_STATS = 193_920  # its running means and variances (num_batches_tracked not counted)


def open_clip_state(layers=(1, 1, 1, 1), width=16, embed_dim=32, image_size=64, seed=0):
  """A random open_clip CLIP state dict (visual.* of a ModifiedResNet + text keys), by hand."""
  shapes = {"logit_scale": (), "token_embedding.weight": (100, 16), "text_projection": (16, 32)}
  for k, (cin, cout) in enumerate([(3, width // 2), (width // 2, width // 2), (width // 2, width)]):
    shapes[f"visual.conv{k + 1}.weight"] = (cout, cin, 3, 3)
    shapes.update(batch_norm_shapes(f"visual.bn{k + 1}", cout))
  stages, cin = bottleneck_shapes("visual.", layers, width)
  shapes.update(stages)
  shapes["visual.attnpool.positional_embedding"] = ((image_size // 32)**2 + 1, cin)
  for name, out in (("q_proj", cin), ("k_proj", cin), ("v_proj", cin), ("c_proj", embed_dim)):
    shapes[f"visual.attnpool.{name}.weight"] = (out, cin)
    shapes[f"visual.attnpool.{name}.bias"] = (out,)
  return random_state_dict(shapes, seed)


# ---------------------------------------------------------------------------------------------
# The model on its own.


def test_outputs_and_aux():
  model = clip_resnet.Model(**DEEP)
  variables = init_once(model)
  assert set(variables) == {"params", "batch_stats"} and "head" not in variables["params"]
  x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  out, aux = jit_apply(model, variables, x, train=False)
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, aux["features"])
  np.testing.assert_array_equal(out, aux["embedding"])
  assert [s.shape for s in aux["stages"]] == [
      (2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256), (2, 2, 2, 512)]
  # open_clip's init: every block starts as its shortcut (bn3 scale 0), the stem's bn3 does not.
  params = variables["params"]
  np.testing.assert_array_equal(params["layer1_1"]["bn3"]["scale"], 0)
  np.testing.assert_array_equal(params["bn3"]["scale"], 1)


def test_classifier_head_train_mode_and_input_size():
  model = clip_resnet.Model(num_classes=5, **TINY)
  variables = init_once(model)
  assert variables["params"]["head"]["kernel"].shape == (32, 5)
  x = 1.0 + jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  (logits, _), updates = jit_apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
  with pytest.raises(ValueError, match=r"position table is for a 2x2 final map \(input 64 px\), "
                                       r"got 3x3"):
    jit_apply(model, variables, jnp.ones((1, 96, 96, 3)), train=False)


def test_bfloat16_compute():
  model = clip_resnet.Model(**TINY)
  variables = init_once(model)
  x = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
  ref, _ = jit_apply(model, variables, x, train=False)
  out, aux = jit_apply(clip_resnet.Model(**TINY, dtype=jnp.bfloat16), variables, x, train=False)
  assert out.dtype == jnp.float32 and aux["stages"][0].dtype == jnp.bfloat16
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


def test_full_size_parameter_count():
  entry = clip_resnet.CHECKPOINTS["clip_rn50x16_openai"]
  model = clip_resnet.Model(**entry["arch"])
  assert model.heads == 48 and model.width * 32 // 64 == 48  # open_clip's rule for RN heads
  shapes = abstract(model, (384, 384))
  assert num_params(shapes["params"]) == RN50X16_PARAMS
  assert num_params(shapes["batch_stats"]) == RN50X16_BN_STATS
  arch = {k: entry["arch"][k] for k in ("layers", "width", "embed_dim", "image_size")}
  assert {k: s.shape for k, s in flat(shapes).items()} == clip_resnet.expected_shapes(**arch)


def test_reference_parameter_count():
  """The constants above are open_clip's own counts, of RN50x16 built on the meta device."""
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip", reason="open_clip builds the reference")
  with torch.device("meta"):
    visual = open_clip.model.CLIP(**open_clip.get_model_config("RN50x16")).visual
  assert sum(p.numel() for p in visual.parameters()) == RN50X16_PARAMS
  stats = sum(b.numel() for name, b in visual.named_buffers()
              if not name.endswith("num_batches_tracked"))
  assert stats == RN50X16_BN_STATS
  assert visual.attnpool.num_heads == 48


def test_checkpoints_entry():
  for entry in clip_resnet.CHECKPOINTS.values():
    assert set(entry) == {"source", "filename", "layout", "arch", "preprocess", "notes"}
    clip_resnet.Model(**entry["arch"])  # every arch key is a Model field
    assert transforms.parse(entry["preprocess"]).spec == entry["preprocess"]


# ---------------------------------------------------------------------------------------------
# Converter and loading.


def test_from_open_clip_maps_and_transposes():
  state = open_clip_state(**{k: DEEP[k] for k in ("layers", "width", "embed_dim", "image_size")})
  variables = clip_resnet.from_open_clip(state, **DEEP)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["conv2"]["kernel"],
                                state["visual.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"],
                                state["visual.layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats["layer4_1"]["bn3"]["var"],
                                state["visual.layer4.1.bn3.running_var"])
  np.testing.assert_array_equal(params["layer1_0"]["downsample_bn"]["scale"],
                                state["visual.layer1.0.downsample.1.weight"])
  np.testing.assert_array_equal(params["attnpool"]["c_proj"]["kernel"],
                                state["visual.attnpool.c_proj.weight"].T)
  np.testing.assert_array_equal(params["attnpool"]["positional_embedding"],
                                state["visual.attnpool.positional_embedding"])
  # Every visual tensor but num_batches_tracked lands somewhere, exactly once; text is ignored.
  n = sum(k.startswith("visual.") and not k.endswith("num_batches_tracked") for k in state)
  assert len(jax.tree.leaves(variables)) == n
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, init_once(clip_resnet.Model(**DEEP)))
  # The architecture is read off the tensors when not given.
  assert jax.tree.map(np.shape, clip_resnet.from_open_clip(state)) == jax.tree.map(
      np.shape, variables)


def test_from_open_clip_reports_keys_and_shapes():
  state = open_clip_state()
  del state["visual.layer3.0.bn2.running_mean"]
  state["visual.layer3.0.conv2.bias"] = np.zeros(64, np.float32)
  with pytest.raises(ValueError, match=r"missing keys visual\.layer3\.0\.bn2\.running_mean; "
                                       r"unexpected keys visual\.layer3\.0\.conv2\.bias$"):
    clip_resnet.from_open_clip(state)
  with pytest.raises(ValueError, match=r"unexpected keys .*visual\.layer1\.1\.bn1\.bias"):
    clip_resnet.from_open_clip(open_clip_state(layers=(2, 1, 1, 1)), **TINY)
  with pytest.raises(ValueError, match=r"visual\.attnpool\.positional_embedding -> params/"
                                       r"attnpool/positional_embedding has shape \(5, 512\) .*"
                                       r"expected \(10, 512\)"):
    clip_resnet.from_open_clip(open_clip_state(), **{**TINY, "image_size": 96})
  with pytest.raises(ValueError, match=r"visual\.attnpool\.c_proj\.weight -> params/attnpool/"
                                       r"c_proj/kernel has shape \(512, 32\).*"
                                       r"expected \(512, 64\)"):
    clip_resnet.from_open_clip(open_clip_state(), **{**TINY, "embed_dim": 64})
  state = open_clip_state()
  state["visual.layer2.0.conv2.weight"] = state["visual.layer2.0.conv2.weight"][:, :, 0, 0]
  with pytest.raises(ValueError, match=r"visual\.layer2\.0\.conv2\.weight: expected a 4-d conv"):
    clip_resnet.from_open_clip(state)


def test_load_pretrained_keeps_a_fresh_head(tmp_path):
  path = tmp_path / "open_clip_model.safetensors"
  state = open_clip_state()
  save_file(state, str(path))
  converted = clip_resnet.from_open_clip(state)
  expected = flat(converted)
  fresh = init_once(clip_resnet.Model(num_classes=7, **TINY))
  loaded = clip_resnet.load_pretrained(fresh, path)
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  for key, value in flat(loaded).items():
    if key[:2] == ("params", "head"):
      np.testing.assert_array_equal(value, flat(fresh)[key])
    else:
      np.testing.assert_array_equal(value, expected[key], err_msg=str(key))
  target = abstract(clip_resnet.Model(**TINY))
  assert_leaves_equal(clip_resnet.load_pretrained(target, str(path)), converted)


def test_load_pretrained_errors(tmp_path):
  fresh = abstract(clip_resnet.Model(**TINY))
  with pytest.raises(FileNotFoundError, match=r"nowhere/m\.safetensors.*open_clip-layout CLIP "
                                              r"ModifiedResNet.*timm/resnet50x16_clip\.openai"):
    clip_resnet.load_pretrained(fresh, tmp_path / "nowhere" / "m.safetensors")
  path = tmp_path / "wide.safetensors"
  save_file(open_clip_state(width=32), str(path))
  with pytest.raises(ValueError, match=r"shape mismatch for \S+: file \(3, 3, 3, 16\).*model "
                                       r"\(3, 3, 3, 8\)"):
    clip_resnet.load_pretrained(fresh, path)


# ---------------------------------------------------------------------------------------------
# Parity with open_clip.


def _open_clip_net(torch, open_clip, layers, seed):
  """open_clip's ModifiedResNet with random weights, BN affine params and running statistics."""
  torch.manual_seed(seed)
  net = open_clip.modified_resnet.ModifiedResNet(layers=layers, output_dim=32, heads=2,
                                                 image_size=64, width=16)
  # open_clip's bn3 starts at zero, which would hide the main branch.
  return randomise_batch_norms(net, (4, 3, 64, 64))


@pytest.mark.parametrize("layers", [(1, 1, 1, 1), (2, 1, 1, 2)])
def test_parity_with_open_clip(tmp_path, layers):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip(
      "open_clip", reason="open_clip is needed for the parity tests against its ModifiedResNet")
  net = _open_clip_net(torch, open_clip, layers, seed=sum(layers))
  state = numpy_state(net, prefix="visual.")
  path = tmp_path / "open_clip_model.safetensors"
  save_file(state, str(path))
  model = clip_resnet.Model(**{**TINY, "layers": layers})
  variables = clip_resnet.load_pretrained(abstract(model), path)

  x = np.random.default_rng(4).standard_normal((2, 64, 64, 3)).astype(np.float32)
  xt = nchw(x)
  with torch.no_grad():
    ref = net.forward_intermediates(xt)
  out, aux = jit_apply(model, variables, jnp.asarray(x), train=False)
  assert_close(out, ref["image_features"].numpy(), 1e-4, "embedding")
  # image_intermediates: the stem's output, then layer1 to layer4's.
  assert_each_close(aux["stages"], [t.numpy().transpose(0, 2, 3, 1)
                                    for t in ref["image_intermediates"][1:]], 1e-4)

  # Train mode: batch statistics, and torch's running-statistics update.
  net.train()
  with torch.no_grad():
    ref_train = net(xt).numpy()
  (out, _), updates = jit_apply(model, variables, jnp.asarray(x), train=True,
                                mutable=["batch_stats"])
  assert_close(out, ref_train, 2e-4, "train-mode embedding")
  assert_trees_close(updates["batch_stats"],
                     clip_resnet.from_open_clip(numpy_state(net, "visual."))["batch_stats"], 1e-4)
