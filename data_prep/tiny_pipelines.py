"""Tiny randomly initialised diffusers pipelines, built from config, for offline smoke runs.

  python -m data_prep.tiny_pipelines --out DIR [--models SD1_5,PIXART]

Each pipeline has the real pipeline class and component classes of its registry entry (UNet or
DiT, VAE, CLIP/T5 text encoders and their tokenizers) at a few channels, saved with
`save_pretrained`; `python -m data_prep.generate --model NAME --model_path DIR/NAME ...` then
runs exactly the code path of the real model. The tests and benchmarks/generation.py use them.
The images are noise: only the machinery is real.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Callable

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def clip_tokenizer(workdir: str, max_length: int = 77):
  """A CLIP BPE tokenizer over single characters (no merges), written to and read from files."""
  from transformers import CLIPTokenizer

  os.makedirs(workdir, exist_ok=True)
  vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
  for symbol in (*_LETTERS, *",.-'0123456789"):
    vocab.setdefault(symbol, len(vocab))
    vocab.setdefault(symbol + "</w>", len(vocab))
  with open(os.path.join(workdir, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(workdir, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  return CLIPTokenizer(os.path.join(workdir, "vocab.json"), os.path.join(workdir, "merges.txt"),
                       model_max_length=max_length)


def t5_tokenizer(max_length: int = 64):
  """A T5 unigram tokenizer over single characters."""
  from transformers import T5Tokenizer

  pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
  pieces += [(c, -2.0) for c in (*_LETTERS, *",.-'0123456789")]
  return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _clip_text(tokenizer, hidden: int = 16, projection: bool = False):
  from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

  config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                          intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)
  return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5_text(tokenizer, hidden: int = 16):
  from transformers import T5Config, T5EncoderModel

  return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=hidden, d_kv=4,
                                 d_ff=2 * hidden, num_layers=2, num_heads=4))


def _vae(latent_channels: int = 4, **kwargs):
  from diffusers import AutoencoderKL

  return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                       down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2,
                       latent_channels=latent_channels, norm_num_groups=4, **kwargs)


def _unet(cross_attention_dim: int, **kwargs):
  from diffusers import UNet2DConditionModel

  return UNet2DConditionModel(
      block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
      out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
      norm_num_groups=4, attention_head_dim=2, **kwargs)


def build_sd(workdir: str):
  """StableDiffusionPipeline (SD V1.5 / V2.1): UNet, VAE, CLIP text encoder, DDIM."""
  from diffusers import DDIMScheduler, StableDiffusionPipeline

  tokenizer = clip_tokenizer(os.path.join(workdir, "_vocab"))
  return StableDiffusionPipeline(
      vae=_vae(), text_encoder=_clip_text(tokenizer), tokenizer=tokenizer,
      unet=_unet(16), scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None,
      feature_extractor=None, requires_safety_checker=False)


def build_sdxl(workdir: str):
  """StableDiffusionXLPipeline (SDXL, Playground V2.5): two CLIP encoders, added conditioning."""
  from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

  tokenizer = clip_tokenizer(os.path.join(workdir, "_vocab"))
  unet = _unet(32, addition_embed_type="text_time", addition_time_embed_dim=4,
               projection_class_embeddings_input_dim=16 + 6 * 4,
               transformer_layers_per_block=1)
  return StableDiffusionXLPipeline(
      vae=_vae(), text_encoder=_clip_text(tokenizer), text_encoder_2=_clip_text(tokenizer,
                                                                                 projection=True),
      tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(),
      add_watermarker=False)


def build_pixart(workdir: str):
  """PixArtAlphaPipeline (PixArt-XL-2): a DiT over T5 text embeddings, DPM-Solver."""
  from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

  tokenizer = t5_tokenizer()
  transformer = PixArtTransformer2DModel(
      sample_size=8, num_layers=2, patch_size=2, attention_head_dim=4, num_attention_heads=2,
      caption_channels=16, in_channels=4, cross_attention_dim=8, out_channels=8,
      attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
      norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
  return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=_t5_text(tokenizer), vae=_vae(),
                             transformer=transformer, scheduler=DPMSolverMultistepScheduler())


def build_flux(workdir: str):
  """FluxPipeline (FLUX.1-schnell): a flow-matching MM-DiT over CLIP + T5, 16-channel VAE."""
  from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

  tokenizer = clip_tokenizer(os.path.join(workdir, "_vocab"))
  tokenizer_2 = t5_tokenizer()
  transformer = FluxTransformer2DModel(
      patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
      num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
      axes_dims_rope=(2, 2, 4))
  return FluxPipeline(
      scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(4, shift_factor=0.0609,
                                                             scaling_factor=1.5035),
      text_encoder=_clip_text(tokenizer), tokenizer=tokenizer,
      text_encoder_2=_t5_text(tokenizer_2), tokenizer_2=tokenizer_2, transformer=transformer)


BUILDERS: dict[str, Callable] = {
    "SD1_5": build_sd,
    "SD2_1": build_sd,
    "SDXL": build_sdxl,
    "PLAYGROUND_2_5": build_sdxl,
    "PIXART": build_pixart,
    "FLUX": build_flux,
}


def build(name: str, out: str, seed: int = 0) -> str:
  """Builds the tiny pipeline of a registered model into out; returns out."""
  import torch

  if name not in BUILDERS:
    raise ValueError(f"no tiny pipeline for {name!r}; available: {', '.join(BUILDERS)}")
  torch.manual_seed(seed)
  with tempfile.TemporaryDirectory() as vocab_dir:  # tokenizers read their files when built
    BUILDERS[name](vocab_dir).save_pretrained(out)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.tiny_pipelines", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--models", default=",".join(BUILDERS))
  args = parser.parse_args(argv)
  for name in args.models.split(","):
    print(build(name, os.path.join(args.out, name)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
