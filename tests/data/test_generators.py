"""The generator registry against the paper's Table 6 and the official folder names."""

from iab_jax.data import generators

OFFICIAL_FOLDERS = ["4o", "CogView3_PLUS", "FLUX", "KANDINSKY", "PIXART", "PLAYGROUND_2_5", "SD1_5",
                    "SD2_1", "SD3", "SD3_5", "SDXL", "dalle3", "gemini", "grok3", "hidream",
                    "hunyuan", "ideogram", "infinity", "janus-pro", "kling", "mid-5.2", "mid-6.0",
                    "real"]


def test_31_generators_plus_real_with_unique_table6_ids():
  assert len(generators.GENERATORS) == 32
  assert sum(not g.is_real for g in generators.GENERATORS) == 31
  ids = [g.levels[3] for g in generators.GENERATORS]
  assert sorted(ids) == list(range(32))


def test_official_folders_are_canonical_and_ordered():
  assert list(generators.OFFICIAL_MODEL_ORDER) == OFFICIAL_FOLDERS
  for name in OFFICIAL_FOLDERS:
    assert generators.canonical_name(name) == name
  assert generators.class_order(reversed(OFFICIAL_FOLDERS)) == OFFICIAL_FOLDERS
  assert generators.class_order(["zeta", "real", "alpha", "SDXL"]) == ["SDXL", "real", "alpha", "zeta"]


def test_table6_levels():
  expect = {"GPT4-o": (0, 0, 0, 0), "SD V1.5": (0, 1, 1, 6), "FLUX.1-schnell": (0, 1, 2, 2),
            "CogView3-Plus": (0, 1, 3, 1), "Janus-Pro": (0, 1, 4, 18), "real": (1, 2, 5, 22),
            "GPT-image-1.5": (0, 0, 0, 31), "Z-Image": (0, 1, 2, 25), "Midjourney V6.0": (0, 0, 0, 21)}
  for display, levels in expect.items():
    assert generators.family_levels(display) == levels
  assert generators.family_levels("my_own_gan") == generators.UNKNOWN_LEVELS
  for g in generators.GENERATORS:  # commercial models are level-2 group 0, and only they
    assert (g.levels[1] == 0) == (g.levels[2] == 0)


def test_aliases_and_semantics():
  assert generators.canonical_name("Stable-Diffusion-v1-5") == "SD1_5"
  assert generators.canonical_name("midjourney v5.2") == "mid-5.2"
  assert generators.canonical_name("unknown_model") == "unknown_model"
  assert len(generators.SEMANTICS) == 10
  assert generators.semantic_name("AnimalFace/cat") == "cat"
  assert generators.semantic_name("Scene_bedroom") == "bedroom"
  assert generators.semantic_name("HumanFace/celebahq") == "celebahq"
  assert generators.semantic_name("imagenet-1k") == "ImageNet-1k"
  assert generators.semantic_name("kitchen") is None
  assert [generators.SEMANTIC_TASKS[k] for k in (1, 2, 3)] == ["cat", "bedroom", "FFHQ"]
