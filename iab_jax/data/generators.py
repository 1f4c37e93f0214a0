"""Registry of the benchmark's generators, their families and the semantic classes.

Family levels follow Table 6 of the ImageAttributionBench paper (the multi-level labels
HiFi-Net is trained with): level 0 generated/real, level 1 commercial/open-source/real,
level 2 the architecture group, level 3 the generator id. Canonical names are the folder
names of the official download where one exists, so that ingest needs no mapping there.
"""

from __future__ import annotations

import dataclasses
import re

LEVEL0_NAMES = ("generated", "real")
LEVEL1_NAMES = ("commercial", "open_source", "real")
# Table 6 groups the open-source models in four architecture groups; the paper's prose names
# group 1 the SD series and group 4 the autoregressive models.
LEVEL2_NAMES = ("commercial", "sd_series", "ldm_dit_group", "dit_group", "autoregressive", "real")


@dataclasses.dataclass(frozen=True)
class Generator:
  name: str  # canonical name, the official folder name where there is one
  display: str  # name as the paper's Table 6 writes it
  levels: tuple[int, int, int, int]
  aliases: tuple[str, ...] = ()

  @property
  def is_real(self) -> bool:
    return self.levels[0] == 1


def _g(name, display, l0, l1, l2, l3, *aliases):
  return Generator(name, display, (l0, l1, l2, l3), tuple(aliases))


# Order: the official code's label order for its 22 generators + real, then the paper's other
# nine generators. Level-3 ids are Table 6's.
GENERATORS: tuple[Generator, ...] = (
    _g("4o", "GPT4-o", 0, 0, 0, 0, "gpt4o", "gpt-4o"),
    _g("CogView3_PLUS", "CogView3-Plus", 0, 1, 3, 1, "cogview3-plus", "cogview3plus"),
    _g("FLUX", "FLUX.1-schnell", 0, 1, 2, 2, "flux.1-schnell", "flux1"),
    _g("KANDINSKY", "Kandinsky-3", 0, 1, 2, 3, "kandinsky-3", "kandinsky3"),
    _g("PIXART", "PixArt-XL-2-1024-MS", 0, 1, 2, 4, "pixart-xl-2-1024-ms", "pixart-alpha"),
    _g("PLAYGROUND_2_5", "Playground V2.5", 0, 1, 2, 5, "playground-v2.5", "playground"),
    _g("SD1_5", "SD V1.5", 0, 1, 1, 6, "sd-v1.5", "stable-diffusion-v1-5"),
    _g("SD2_1", "SD V2.1", 0, 1, 1, 7, "sd-v2.1", "stable-diffusion-2-1"),
    _g("SD3", "SD V3-medium", 0, 1, 1, 8, "sd-v3-medium", "sd3-medium"),
    _g("SD3_5", "SD V3.5-medium", 0, 1, 1, 9, "sd-v3.5-medium", "sd3.5-medium"),
    _g("SDXL", "SDXL-base-V1.0", 0, 1, 1, 10, "sdxl-base-v1.0", "sdxl-base"),
    _g("dalle3", "DALL-E 3", 0, 0, 0, 11, "dall-e-3", "dall-e 3"),
    _g("gemini", "Gemini-2.0-flash-exp-image-generation", 0, 0, 0, 12, "gemini-2.0-flash"),
    _g("grok3", "Grok3-image", 0, 0, 0, 13, "grok3-image"),
    _g("hidream", "HiDream-I1-fast", 0, 1, 3, 14, "hidream-i1-fast"),
    _g("hunyuan", "Hunyuan-DiT", 0, 1, 3, 15, "hunyuan-dit", "hunyuandit"),
    _g("ideogram", "Ideogram-generate-V-1-TURBO", 0, 0, 0, 16, "ideogram-v1-turbo"),
    _g("infinity", "Infinity-2B", 0, 1, 4, 17, "infinity-2b"),
    _g("janus-pro", "Janus-Pro", 0, 1, 4, 18, "janus_pro", "januspro"),
    _g("kling", "Kling-image-V1", 0, 0, 0, 19, "kling-image-v1"),
    _g("mid-5.2", "Midjourney V5.2", 0, 0, 0, 20, "midjourney-v5.2", "mj5.2"),
    _g("mid-6.0", "Midjourney V6.0", 0, 0, 0, 21, "midjourney-v6.0", "mj6.0"),
    _g("real", "real", 1, 2, 5, 22),
    _g("FLUX2_KLEIN", "FLUX.2-Klein", 0, 1, 2, 23, "flux.2-klein", "flux2-klein"),
    _g("GLM_IMAGE", "GLM-Image", 0, 1, 4, 24, "glm-image"),
    _g("Z_IMAGE", "Z-Image", 0, 1, 2, 25, "z-image", "z-image-turbo"),
    _g("seedream3", "Doubao-Seedream-3.0-t2i", 0, 0, 0, 26, "doubao-seedream-3.0-t2i"),
    _g("seedream5", "Doubao-Seedream-5.0-lite", 0, 0, 0, 27, "doubao-seedream-5.0-lite"),
    _g("gemini2.5", "Gemini-2.5-flash-image", 0, 0, 0, 28, "gemini-2.5-flash-image"),
    _g("gemini3", "Gemini-3-pro-image", 0, 0, 0, 29, "gemini-3-pro-image"),
    _g("gpt-image-1", "GPT-image-1", 0, 0, 0, 30, "gpt_image_1"),
    _g("gpt-image-1.5", "GPT-image-1.5", 0, 0, 0, 31, "gpt_image_1.5"),
)

OFFICIAL_MODEL_ORDER: tuple[str, ...] = tuple(g.name for g in GENERATORS[:23])
UNKNOWN_LEVELS = (-1, -1, -1, -1)


def _norm(name: str) -> str:
  return re.sub(r"[\s_]+", "-", name.strip().lower())


_BY_KEY: dict[str, Generator] = {}
for _gen in GENERATORS:
  for _key in (_gen.name, _gen.display, *_gen.aliases):
    _BY_KEY.setdefault(_norm(_key), _gen)


def lookup(name: str) -> Generator | None:
  """The registered generator for a canonical name, display name or alias (None if unknown)."""
  return _BY_KEY.get(_norm(name))


def canonical_name(name: str) -> str:
  """Canonical name for a registered generator; an unknown name is kept as given."""
  gen = lookup(name)
  return gen.name if gen else name


REAL = "real"  # the class of real photographs, in every dataset this package builds or ingests


def is_real_name(name: str) -> bool:
  """Whether a class name means real images: the registry's real class (or an alias), or "real"."""
  gen = lookup(name)
  return gen.is_real if gen else name == REAL


def real_class_index(classes) -> int | None:
  """The index of the class of real images among `classes` (is_real_name), None without one."""
  found = [i for i, c in enumerate(classes) if is_real_name(c)]
  if len(found) > 1:
    raise ValueError(f"classes {', '.join(classes[i] for i in found)} all name real images")
  return found[0] if found else None


def family_levels(name: str) -> tuple[int, int, int, int]:
  gen = lookup(name)
  return gen.levels if gen else UNKNOWN_LEVELS


def class_order(names) -> list[str]:
  """Orders class names as the official code labels them; unregistered names come last, sorted.

  With every official class present this is the official label order, so label ids match the
  released checkpoints.
  """
  position = {g.name: i for i, g in enumerate(GENERATORS)}
  names = sorted(set(names))
  return sorted(names, key=lambda n: (position.get(n, len(position)), n))


# The ten semantic classes: name -> (official relative folder, source dataset).
SEMANTICS: dict[str, tuple[str, str]] = {
    "cat": ("AnimalFace/cat", "AFHQ"),
    "dog": ("AnimalFace/dog", "AFHQ"),
    "wild": ("AnimalFace/wild", "AFHQ"),
    "COCO": ("COCO", "COCO"),
    "FFHQ": ("HumanFace/FFHQ", "FFHQ"),
    "celebahq": ("HumanFace/celebahq", "CelebA-HQ"),
    "ImageNet-1k": ("ImageNet-1k", "ImageNet-1k"),
    "bedroom": ("Scene/bedroom", "LSUN"),
    "church": ("Scene/church", "LSUN"),
    "classroom": ("Scene/classroom", "LSUN"),
}
SEMANTIC_ORDER: tuple[str, ...] = tuple(SEMANTICS)
SEMANTIC_TASKS = {1: "cat", 2: "bedroom", 3: "FFHQ"}
_SEMANTIC_BY_KEY = {_norm(k): k for k in SEMANTICS}
_SEMANTIC_BY_KEY.update({_norm(v[0]): k for k, v in SEMANTICS.items()})
_SEMANTIC_BY_KEY.update({_norm(v[0].replace("/", "_")): k for k, v in SEMANTICS.items()})


def semantic_name(key: str) -> str | None:
  """Semantic class for a name, official folder ('Scene/bedroom') or parquet pair ('Scene_bedroom')."""
  return _SEMANTIC_BY_KEY.get(_norm(key))
