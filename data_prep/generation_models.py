"""The open-source text-to-image generators of the benchmark, as diffusers pipelines.

One entry per generator the paper ran through diffusers (paper §3.3, Table 5): the pipeline
class, the Hugging Face model id, and the paper's sampling parameters (steps, guidance scale,
image size, whether the model was CPU-offloaded on the authors' 24 GB RTX 3090). `dtype` is ours:
the paper does not state it, so each entry takes the precision its model card loads it in.

Names are the canonical generator names of `iab_jax.data.generators` (the official folder names),
so generated records and ingested official images share one label space.

Paper facts that shape the entries:
- Resolution: SD V1.5 and FLUX.1-schnell 512², SD V2.1 and Kandinsky-3 768², the rest 1024².
- The negative prompt (`NEGATIVE_PROMPT`) is applied "to enhance realism". It only has an effect
  where classifier-free guidance runs on it, so it is passed to pipelines that take a
  `negative_prompt` and guide with scale > 1; FLUX.1-schnell (guidance-distilled), Z-Image-Turbo
  and HiDream-I1-fast (guidance 0) ignore it, and FLUX.2-klein and GLM-Image take none.
- Janus-Pro and Infinity-2B ran from their GitHub repositories, not diffusers: they are not here
  (generate them with their own code and ingest the PNGs; see README).
- Commercial models are API-only; their images enter through `data_prep.ingest`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from iab_jax.data import generators

# Paper §3.3, verbatim.
NEGATIVE_PROMPT = ("cartoon, anime, drawing, painting, unrealistic, deformed features, blurry, "
                   "low resolution, oversaturated, illustration, flat design, vector art, 2D, "
                   "simple, graphic design")
DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Component:
  """A pipeline component loaded separately from the pipeline's own repository."""

  name: str  # the pipeline's argument, e.g. "text_encoder_4"
  cls: str  # transformers class name
  model_id: str
  kwargs: tuple[tuple[str, Any], ...] = ()
  with_dtype: bool = True  # tokenizers take no torch_dtype


@dataclasses.dataclass(frozen=True)
class GenerationModel:
  name: str  # canonical generator name
  pipeline: str  # diffusers pipeline class
  model_id: str  # Hugging Face repository
  steps: int  # Table 5 num_inference_steps
  guidance: float  # Table 5 guidance_scale
  size: int  # Table 5 width = height
  cpu_offload: bool  # Table 5 enable_model_cpu_offload
  dtype: str
  negative_prompt: bool  # whether NEGATIVE_PROMPT is passed
  variant: str | None = None  # weight variant to download ("fp16")
  load_kwargs: tuple[tuple[str, Any], ...] = ()
  call_kwargs: tuple[tuple[str, Any], ...] = ()
  components: tuple[Component, ...] = ()
  notes: str = ""

  @property
  def generator(self) -> generators.Generator:
    return generators.lookup(self.name)


_NO_SAFETY_CHECKER = (("safety_checker", None), ("requires_safety_checker", False))

MODELS: dict[str, GenerationModel] = {m.name: m for m in (
    GenerationModel(
        "SD1_5", "StableDiffusionPipeline", "runwayml/stable-diffusion-v1-5", 30, 7.5, 512, False,
        "float16", True, load_kwargs=_NO_SAFETY_CHECKER,
        notes="runwayml's repository is gone from the hub; its copy is "
              "stable-diffusion-v1-5/stable-diffusion-v1-5 (pass it with --model_id). The NSFW "
              "safety checker is off: it replaces flagged images with black ones, which would "
              "enter the data set as images of no generator."),
    GenerationModel(
        "SD2_1", "StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1", 30, 7.5, 768,
        False, "float16", True, load_kwargs=_NO_SAFETY_CHECKER),
    GenerationModel(
        "SD3", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3-medium-diffusers", 28,
        7.0, 1024, False, "float16", True),
    GenerationModel(
        "SD3_5", "StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3.5-medium", 40, 4.5,
        1024, False, "bfloat16", True),
    GenerationModel(
        "SDXL", "StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", 30, 5.0,
        1024, False, "float16", True, variant="fp16"),
    GenerationModel(
        "FLUX", "FluxPipeline", "black-forest-labs/FLUX.1-schnell", 4, 3.5, 512, True, "bfloat16",
        False, notes="schnell is guidance-distilled: guidance_scale has no effect, as in the "
                     "paper's setting."),
    GenerationModel(
        "KANDINSKY", "Kandinsky3Pipeline", "kandinsky-community/kandinsky-3", 25, 4.0, 768, True,
        "float16", True, variant="fp16"),
    GenerationModel(
        "PIXART", "PixArtAlphaPipeline", "PixArt-alpha/PixArt-XL-2-1024-MS", 20, 6.0, 1024, False,
        "float16", True),
    GenerationModel(
        "PLAYGROUND_2_5", "StableDiffusionXLPipeline",
        "playgroundai/playground-v2.5-1024px-aesthetic", 50, 3.0, 1024, True, "float16", True,
        variant="fp16"),
    GenerationModel(
        "CogView3_PLUS", "CogView3PlusPipeline", "THUDM/CogView3-Plus-3B", 50, 7.0, 1024, True,
        "bfloat16", True),
    GenerationModel(
        "hidream", "HiDreamImagePipeline", "HiDream-ai/HiDream-I1-Fast", 16, 0.0, 1024, True,
        "bfloat16", False,
        components=(
            Component("tokenizer_4", "PreTrainedTokenizerFast",
                      "meta-llama/Meta-Llama-3.1-8B-Instruct", with_dtype=False),
            Component("text_encoder_4", "LlamaForCausalLM", "meta-llama/Meta-Llama-3.1-8B-Instruct",
                      (("output_hidden_states", True), ("output_attentions", True))),
        ),
        notes="The paper ran HiDream from its GitHub repository; this is the diffusers port of "
              "the same weights. Its fourth text encoder is Llama-3.1-8B-Instruct, a gated "
              "repository loaded separately."),
    GenerationModel(
        "hunyuan", "HunyuanDiTPipeline", "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers", 35, 6.0,
        1024, True, "float16", True,
        notes="The paper ran Hunyuan-DiT from its GitHub repository without naming a version; "
              "this is the diffusers port of v1.2."),
    GenerationModel(
        "Z_IMAGE", "ZImagePipeline", "Tongyi-MAI/Z-Image-Turbo", 9, 0.0, 1024, True, "bfloat16",
        False),
    GenerationModel(
        "FLUX2_KLEIN", "Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-4B", 4, 1.0, 1024,
        True, "bfloat16", False),
    GenerationModel(
        "GLM_IMAGE", "GlmImagePipeline", "zai-org/GLM-Image", 50, 1.5, 1024, True, "bfloat16",
        False),
)}

# Open-source generators of the paper that diffusers does not run.
NOT_IN_DIFFUSERS = ("infinity", "janus-pro")


def get(name: str) -> GenerationModel:
  """The registered model for a generator name or alias; a clear error otherwise."""
  gen = generators.lookup(name)
  if gen is not None and gen.name in MODELS:
    return MODELS[gen.name]
  if gen is not None and gen.levels[1] == 0:
    why = (f"{gen.display} is a commercial, API-only model: generate its images through its API, "
           "save them as PNG under ROOT/{model}/{AnimalFace/cat,...}/ named *_p{P}_i{K}.png and "
           "bring them in with `python -m data_prep.ingest`")
  elif gen is not None and gen.name in NOT_IN_DIFFUSERS:
    why = (f"{gen.display} has no diffusers pipeline (the paper ran it from its GitHub "
           "repository): generate with its own code and ingest the PNGs with "
           "`python -m data_prep.ingest`")
  else:
    why = "not a registered generator"
  raise ValueError(f"--model {name!r}: {why}. Registered diffusers models: {', '.join(MODELS)}")


def table() -> str:
  """The registry as a text table (`python -m data_prep.generate --list`)."""
  rows = [("name", "pipeline", "model id", "steps", "cfg", "size", "offload", "dtype", "neg")]
  for m in MODELS.values():
    rows.append((m.name, m.pipeline, m.model_id, str(m.steps), f"{m.guidance:g}", str(m.size),
                 "yes" if m.cpu_offload else "no", m.dtype, "yes" if m.negative_prompt else "no"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
