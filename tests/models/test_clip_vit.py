"""CLIP's vision transformer against transformers' and open_clip's, on reduced configurations.

The parity tests build the reference with random weights, save its state dict with safetensors,
load it through our converters and compare outputs and intermediate features in float32. They skip
when the reference library does not import; the rest runs on state dicts written here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax.data import transforms
from iab_jax.models import clip_vit
from tests.models import harness
from tests.models.harness import (assert_close, assert_each_close, assert_leaves_equal, flat,
                                  jit_apply, nchw, num_params, numpy_state, random_state_dict)

# A reduced configuration of the same architecture: 4 x 4 patches of 14 px, 2 blocks of width 64.
TINY = dict(width=64, layers=2, heads=4, patch_size=14, image_size=56, embed_dim=32)

VIT_L14_PARAMS = 303_966_208  # transformers CLIPVisionModelWithProjection, openai ViT-L/14
VIT_H14_PARAMS = 632_076_800  # open_clip CLIP('ViT-H-14').visual


# Variables from a TINY-sized image; the same few models recur across the tests.
init = functools.partial(harness.init_once, hw=(56, 56))
abstract = functools.partial(harness.abstract, hw=(56, 56))


def transformers_state(width=64, layers=2, patch_size=14, image_size=56, embed_dim=32, seed=0,
                       text=True):
  """A random CLIPModel state dict with transformers' key names and shapes, written by hand."""
  grid = image_size // patch_size
  v = "vision_model."
  shapes = {
      v + "embeddings.class_embedding": (width,),
      v + "embeddings.patch_embedding.weight": (width, 3, patch_size, patch_size),
      v + "embeddings.position_embedding.weight": (grid * grid + 1, width),
      v + "pre_layrnorm.weight": (width,), v + "pre_layrnorm.bias": (width,),
      v + "post_layernorm.weight": (width,), v + "post_layernorm.bias": (width,),
      "visual_projection.weight": (embed_dim, width),
  }
  for i in range(layers):
    p = f"{v}encoder.layers.{i}."
    for name, (o, n) in {"self_attn.q_proj": (width, width), "self_attn.k_proj": (width, width),
                         "self_attn.v_proj": (width, width), "self_attn.out_proj": (width, width),
                         "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width)}.items():
      shapes[p + name + ".weight"] = (o, n)
      shapes[p + name + ".bias"] = (o,)
    for name in ("layer_norm1", "layer_norm2"):
      shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (width,)
  if text:
    shapes.update({"text_model.embeddings.token_embedding.weight": (10, 8),
                   "text_model.final_layer_norm.weight": (8,), "text_projection.weight": (4, 8),
                   "logit_scale": ()})
  state = random_state_dict(shapes, seed)
  if text:  # what checkpoints saved by older transformers carry as persistent buffers
    state[v + "embeddings.position_ids"] = np.arange(grid * grid + 1)[None]
    state["text_model.embeddings.position_ids"] = np.arange(7)[None]
  return state


def open_clip_state(width=64, layers=2, patch_size=14, image_size=56, embed_dim=32, seed=0):
  """A random open_clip CLIP state dict (visual.* and some text keys), written by hand."""
  grid = image_size // patch_size
  shapes = {
      "visual.class_embedding": (width,), "visual.positional_embedding": (grid * grid + 1, width),
      "visual.proj": (width, embed_dim), "visual.conv1.weight": (width, 3, patch_size, patch_size),
      "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
      "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
      "positional_embedding": (8, 16), "text_projection": (16, embed_dim), "logit_scale": (),
      "token_embedding.weight": (100, 16), "transformer.resblocks.0.ln_1.weight": (16,),
      "ln_final.weight": (16,),
  }
  for i in range(layers):
    p = f"visual.transformer.resblocks.{i}."
    shapes.update({p + "attn.in_proj_weight": (3 * width, width),
                   p + "attn.in_proj_bias": (3 * width,),
                   p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                   p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
                   p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,)})
    for name in ("ln_1", "ln_2"):
      shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (width,)
  return random_state_dict(shapes, seed)


# ---------------------------------------------------------------------------------------------
# The model on its own.


def test_outputs_and_aux():
  model = clip_vit.Model(**TINY)
  variables = init(model)
  assert set(variables) == {"params"} and "head" not in variables["params"]
  x = jax.random.normal(jax.random.key(1), (2, 56, 56, 3))
  out, aux = jit_apply(model, variables, x, train=False)
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, aux["features"])
  np.testing.assert_array_equal(out, aux["embedding"])
  assert aux["cls"].shape == (2, 64) and aux["cls"].dtype == jnp.float32
  assert aux["tokens"].shape == (2, 17, 64)
  assert len(aux["hidden_states"]) == 3
  assert all(h.shape == (2, 17, 64) for h in aux["hidden_states"])
  np.testing.assert_array_equal(aux["tokens"], aux["hidden_states"][-1])
  # The embedding is the class token's: patch tokens do not reach it except through attention.
  np.testing.assert_allclose(out, aux["cls"] @ variables["params"]["proj"]["kernel"], rtol=1e-5,
                             atol=1e-5)
  # train=True computes the same function (no dropout, no batch norm).
  np.testing.assert_array_equal(out, jit_apply(model, variables, x, train=True)[0])


def test_classifier_head_and_other_resolutions():
  model = clip_vit.Model(num_classes=5, **TINY)
  variables = init(model)
  assert variables["params"]["head"]["kernel"].shape == (32, 5)
  for hw in [(56, 56), (84, 70), (28, 41)]:
    logits, aux = jit_apply(model, variables, jnp.ones((2, *hw, 3)), train=False)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert aux["tokens"].shape == (2, 1 + (hw[0] // 14) * (hw[1] // 14), 64)
  with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
    jit_apply(model, variables, jnp.ones((1, 13, 56, 3)), train=False)
  with pytest.raises(ValueError, match="unknown activation 'relu'"):
    clip_vit.Model(activation="relu", **TINY).init(jax.random.key(0), jnp.ones((1, 56, 56, 3)),
                                                   train=False)


def test_bfloat16_compute():
  model = clip_vit.Model(**TINY)
  variables = init(model)
  x = jax.random.normal(jax.random.key(2), (2, 56, 56, 3))
  ref, _ = jit_apply(model, variables, x, train=False)
  out, aux = jit_apply(clip_vit.Model(**TINY, dtype=jnp.bfloat16), variables, x, train=False)
  assert out.dtype == jnp.float32 and aux["cls"].dtype == jnp.float32
  assert aux["tokens"].dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert float(jnp.abs(out - ref).max()) < 0.05 * float(jnp.abs(ref).max())


@pytest.mark.parametrize("name, expected", [("clip_vit_l14_openai", VIT_L14_PARAMS),
                                            ("clip_vit_h14_laion2b", VIT_H14_PARAMS)])
def test_full_size_parameter_count(name, expected):
  arch = clip_vit.CHECKPOINTS[name]["arch"]
  model = clip_vit.Model(**arch)
  shapes = abstract(model, hw=(224, 224))
  assert num_params(shapes) == expected
  assert {k: s.shape for k, s in flat(shapes["params"]).items()} == clip_vit.expected_shapes(
      **{k: arch[k] for k in ("width", "layers", "patch_size", "image_size", "embed_dim")})


def test_reference_parameter_counts():
  """The constants above are the references' own counts, of models built on the meta device."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers", reason="transformers builds the reference")
  open_clip = pytest.importorskip("open_clip", reason="open_clip builds the reference")
  with torch.device("meta"):
    vit_l = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu"))
    vit_h = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14")).visual
  assert sum(p.numel() for p in vit_l.parameters()) == VIT_L14_PARAMS
  assert sum(p.numel() for p in vit_h.parameters()) == VIT_H14_PARAMS


def test_checkpoints_entries():
  for name, entry in clip_vit.CHECKPOINTS.items():
    assert set(entry) == {"source", "filename", "layout", "arch", "preprocess", "notes"}, name
    clip_vit.Model(**entry["arch"])  # every arch key is a Model field
  assert clip_vit.CHECKPOINTS["clip_vit_l14_openai"]["arch"]["activation"] == "quick_gelu"
  assert clip_vit.CHECKPOINTS["clip_vit_h14_laion2b"]["arch"]["activation"] == "gelu"
  for entry in clip_vit.CHECKPOINTS.values():
    assert transforms.parse(entry["preprocess"]).spec == entry["preprocess"]


def test_position_table_resize_matches_torch_bicubic():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  for grid, new in [((4, 4), (6, 5)), ((16, 16), (24, 24)), ((16, 16), (9, 13)), ((3, 5), (3, 5))]:
    table = rng.standard_normal((1 + grid[0] * grid[1], 8)).astype(np.float32)
    ours = clip_vit.resize_position_table(jnp.asarray(table), grid, new)
    patches = torch.from_numpy(table[1:]).reshape(1, *grid, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(patches, size=new, mode="bicubic", align_corners=False)
    ref = np.concatenate([table[:1], ref.permute(0, 2, 3, 1).reshape(-1, 8).numpy()])
    assert_close(ours, ref, 1e-5, f"{grid} -> {new}")


# ---------------------------------------------------------------------------------------------
# Converters and loading.


def test_from_transformers_maps_and_transposes():
  state = transformers_state()
  params = clip_vit.from_transformers(state, **TINY)["params"]
  v = "vision_model."
  np.testing.assert_array_equal(
      params["patch_embed"]["kernel"],
      state[v + "embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["pos_embedding"],
                                state[v + "embeddings.position_embedding.weight"])
  np.testing.assert_array_equal(params["proj"]["kernel"], state["visual_projection.weight"].T)
  qkv = params["block_1"]["attn"]["qkv"]
  for j, name in enumerate("qkv"):
    np.testing.assert_array_equal(qkv["kernel"][:, 64 * j:64 * (j + 1)],
                                  state[f"{v}encoder.layers.1.self_attn.{name}_proj.weight"].T)
    np.testing.assert_array_equal(qkv["bias"][64 * j:64 * (j + 1)],
                                  state[f"{v}encoder.layers.1.self_attn.{name}_proj.bias"])
  np.testing.assert_array_equal(params["block_0"]["ln_2"]["scale"],
                                state[v + "encoder.layers.0.layer_norm2.weight"])
  np.testing.assert_array_equal(params["block_0"]["fc2"]["kernel"],
                                state[v + "encoder.layers.0.mlp.fc2.weight"].T)
  np.testing.assert_array_equal(params["ln_pre"]["bias"], state[v + "pre_layrnorm.bias"])
  # Every vision tensor lands somewhere (q, k, v three in one); the text tower is ignored.
  model_shapes = jax.tree.map(np.shape, init(clip_vit.Model(**TINY))["params"])
  assert jax.tree.map(np.shape, params) == model_shapes
  # Arch read off the tensors when not given; a vision-only state dict converts the same.
  vision_only = transformers_state(text=False)
  assert jax.tree.map(np.shape, clip_vit.from_transformers(vision_only)["params"]) == model_shapes


def test_from_open_clip_maps():
  state = open_clip_state()
  params = clip_vit.from_open_clip(state, **TINY)["params"]
  np.testing.assert_array_equal(params["proj"]["kernel"], state["visual.proj"])
  np.testing.assert_array_equal(params["block_0"]["attn"]["qkv"]["kernel"],
                                state["visual.transformer.resblocks.0.attn.in_proj_weight"].T)
  np.testing.assert_array_equal(params["block_1"]["fc1"]["bias"],
                                state["visual.transformer.resblocks.1.mlp.c_fc.bias"])
  np.testing.assert_array_equal(params["class_embedding"], state["visual.class_embedding"])
  assert jax.tree.map(np.shape, params) == jax.tree.map(
      np.shape, init(clip_vit.Model(**TINY))["params"])


def test_converters_report_keys_and_shapes():
  state = transformers_state()
  del state["vision_model.encoder.layers.1.mlp.fc1.bias"]
  state["vision_model.encoder.layers.1.mlp.fc3.bias"] = np.zeros(4, np.float32)
  with pytest.raises(ValueError, match=r"missing keys .*layers\.1\.mlp\.fc1\.bias; unexpected "
                                       r"keys .*layers\.1\.mlp\.fc3\.bias"):
    clip_vit.from_transformers(state)
  # A deeper file than the architecture asked for: its extra blocks are unexpected.
  with pytest.raises(ValueError, match=r"unexpected keys .*resblocks\.2\.attn\.in_proj_bias"):
    clip_vit.from_open_clip(open_clip_state(layers=3), **TINY)
  with pytest.raises(ValueError, match=r"visual\.proj -> params/proj/kernel has shape \(64, 32\).*"
                                       r"expected \(64, 48\)"):
    clip_vit.from_open_clip(open_clip_state(), **{**TINY, "embed_dim": 48})
  with pytest.raises(ValueError, match=r"position_embedding\.weight -> params/pos_embedding has "
                                       r"shape \(17, 64\).*expected \(65, 64\)"):
    clip_vit.from_transformers(transformers_state(), **{**TINY, "image_size": 112})
  state = open_clip_state()
  state["visual.conv1.weight"] = state["visual.conv1.weight"][:, :, 0, 0]
  with pytest.raises(ValueError, match=r"visual\.conv1\.weight: expected a 4-d conv weight"):
    clip_vit.from_open_clip(state)
  state = transformers_state()
  state["vision_model.encoder.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
  with pytest.raises(ValueError, match=r"q_proj\.weight \(with k, v\) -> params/block_0/attn/qkv/"
                                       r"kernel has shape \(64, 136\)"):
    clip_vit.from_transformers(state)


@pytest.mark.parametrize("layout", ["transformers", "open_clip"])
def test_load_pretrained_keeps_a_fresh_head(tmp_path, layout):
  path = tmp_path / "model.safetensors"
  state = transformers_state() if layout == "transformers" else open_clip_state()
  save_file(state, str(path))
  convert = getattr(clip_vit, f"from_{layout}")
  converted = convert(state)["params"]
  expected = flat(converted)
  fresh = init(clip_vit.Model(num_classes=7, **TINY))
  loaded = clip_vit.load_pretrained(fresh, path)
  assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
  for key, value in flat(loaded["params"]).items():
    if key[0] == "head":
      np.testing.assert_array_equal(value, flat(fresh["params"])[key])
    else:
      np.testing.assert_array_equal(value, expected[key], err_msg=str(key))
  # Abstract targets (jax.eval_shape, no init) load the same; no head here.
  target = abstract(clip_vit.Model(**TINY))
  assert_leaves_equal(clip_vit.load_pretrained(target, str(path))["params"], converted)


def test_load_pretrained_errors(tmp_path):
  fresh = abstract(clip_vit.Model(**TINY))
  with pytest.raises(FileNotFoundError, match=r"nowhere/model\.safetensors.*CLIP image tower.*"
                                              r"openai/clip-vit-large-patch14.*laion/CLIP-ViT-H"):
    clip_vit.load_pretrained(fresh, tmp_path / "nowhere" / "model.safetensors")
  path = tmp_path / "other.safetensors"
  save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(path))
  with pytest.raises(ValueError, match="neither a transformers nor an open_clip CLIP state dict"):
    clip_vit.load_pretrained(fresh, path)
  # A wider file than the model: reported by key and shapes.
  save_file(open_clip_state(width=128), str(path))
  with pytest.raises(ValueError, match=r"shape mismatch for params/patch_embed/kernel: "
                                       r"file \(14, 14, 3, 128\)"):
    clip_vit.load_pretrained(fresh, path)


# ---------------------------------------------------------------------------------------------
# Parity with the references.


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip(
      "transformers", reason="transformers is needed for the parity tests against its CLIP")
  torch.manual_seed(0)
  config = transformers.CLIPVisionConfig(
      hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
      patch_size=14, image_size=56, projection_dim=32, hidden_act="quick_gelu")
  net = transformers.CLIPVisionModelWithProjection(config).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if "norm" in name:  # LayerNorm affine params away from their (1, 0) init
        p.add_(0.3 * torch.randn_like(p))
      elif "position_embedding" in name:  # as large as the patch embeddings: resizing matters
        p.normal_(0.0, 0.5)
  state = numpy_state(net)
  path = tmp_path_factory.mktemp("hf") / "model.safetensors"
  save_file(state, str(path))
  model = clip_vit.Model(**TINY, activation="quick_gelu")
  variables = clip_vit.load_pretrained(abstract(model), path)
  return torch, net, model, variables


@pytest.mark.parametrize("hw", [(56, 56), (84, 70), (42, 42)])
def test_parity_with_transformers(hf_pair, hw):
  torch, net, model, variables = hf_pair
  x = np.random.default_rng(hw[1]).standard_normal((2, *hw, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(pixel_values=nchw(x), output_hidden_states=True,
              interpolate_pos_encoding=hw != (56, 56))
  out, aux = jit_apply(model, variables, jnp.asarray(x), train=False)
  assert_close(out, ref.image_embeds.numpy(), 1e-4, "image_embeds")
  assert_close(aux["tokens"], ref.last_hidden_state.numpy(), 1e-4, "last_hidden_state")
  cls = net.vision_model.post_layernorm(ref.last_hidden_state[:, 0]).detach().numpy()
  assert_close(aux["cls"], cls, 1e-4, "pooler_output")
  assert len(aux["hidden_states"]) == 3
  assert_each_close(aux["hidden_states"], [h.numpy() for h in ref.hidden_states], 1e-4,
                    "hidden state")


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_parity_with_open_clip(tmp_path, quick_gelu):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip(
      "open_clip", reason="open_clip is needed for the parity tests against its CLIP")
  torch.manual_seed(1)
  net = open_clip.model.CLIP(
      embed_dim=32, quick_gelu=quick_gelu,
      vision_cfg=dict(layers=2, width=64, head_width=16, patch_size=14, image_size=56),
      text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1)).eval()
  with torch.no_grad():  # MHA biases start at zero, LayerNorms at (1, 0): make them count
    for name, p in net.visual.named_parameters():
      if "bias" in name or "ln" in name:
        p.add_(0.3 * torch.randn_like(p))
  path = tmp_path / "open_clip_model.safetensors"
  save_file(numpy_state(net), str(path))
  model = clip_vit.Model(**TINY, activation="quick_gelu" if quick_gelu else "gelu")
  variables = clip_vit.load_pretrained(abstract(model), path)

  x = np.random.default_rng(3).standard_normal((2, 56, 56, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net.visual.forward_intermediates(nchw(x), output_fmt="NLC", output_extra_tokens=True)
    image_features = net.encode_image(nchw(x)).numpy()
  out, aux = jit_apply(model, variables, jnp.asarray(x), train=False)
  assert_close(out, image_features, 1e-4, "encode_image")
  assert_close(out, ref["image_features"].numpy(), 1e-4, "image_features")
  # Each block's output: its class token (the "prefix") and patch tokens.
  blocks = [np.concatenate([prefix.numpy(), tokens.numpy()], axis=1) for tokens, prefix in
            zip(ref["image_intermediates"], ref["image_intermediates_prefix"])]
  assert_each_close(aux["hidden_states"][1:], blocks, 1e-4, "block")
