"""The generation stage on tiny random diffusers pipelines: same code path as the real models."""

import inspect
import os
import shutil

import diffusers
import numpy as np
import pytest

from data_prep import captions, generate, generation_models, merge, sources, tiny_pipelines
from iab_jax.data import generators, records

# The issue's fifteen open-source generators (the authors' model ids where they named them).
EXPECTED_IDS = {
    "SD1_5": "runwayml/stable-diffusion-v1-5",
    "SD2_1": "stabilityai/stable-diffusion-2-1",
    "SD3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "SD3_5": "stabilityai/stable-diffusion-3.5-medium",
    "SDXL": "stabilityai/stable-diffusion-xl-base-1.0",
    "PLAYGROUND_2_5": "playgroundai/playground-v2.5-1024px-aesthetic",
    "PIXART": "PixArt-alpha/PixArt-XL-2-1024-MS",
    "KANDINSKY": "kandinsky-community/kandinsky-3",
    "FLUX": "black-forest-labs/FLUX.1-schnell",
    "CogView3_PLUS": "THUDM/CogView3-Plus-3B",
    "Z_IMAGE": "Tongyi-MAI/Z-Image-Turbo",
    "FLUX2_KLEIN": "black-forest-labs/FLUX.2-klein-4B",
    "GLM_IMAGE": "zai-org/GLM-Image",
    "hidream": None,
    "hunyuan": None,
}
# Paper Table 5: steps, guidance, size, CPU offload.
TABLE5 = {
    "SD1_5": (30, 7.5, 512, False), "SD2_1": (30, 7.5, 768, False),
    "SD3": (28, 7.0, 1024, False), "SD3_5": (40, 4.5, 1024, False),
    "SDXL": (30, 5.0, 1024, False), "FLUX": (4, 3.5, 512, True),
    "KANDINSKY": (25, 4.0, 768, True), "PIXART": (20, 6.0, 1024, False),
    "PLAYGROUND_2_5": (50, 3.0, 1024, True), "CogView3_PLUS": (50, 7.0, 1024, True),
    "hidream": (16, 0.0, 1024, True), "hunyuan": (35, 6.0, 1024, True),
    "Z_IMAGE": (9, 0.0, 1024, True), "FLUX2_KLEIN": (4, 1.0, 1024, True),
    "GLM_IMAGE": (50, 1.5, 1024, True),
}
FAST = ["--size", "32", "--steps", "2", "--dtype", "float32", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_pipelines")
  return {name: tiny_pipelines.build(name, str(root / name)) for name in ("SD1_5", "PIXART")}


def run(out, model, tiny, *extra):
  generate.main(["--model", model, "--model_path", tiny[model], "--out", str(out), *FAST, *extra])
  return records.Dataset(str(out))


def digests(ds):
  return dict(zip(ds.column("key"), ds.column("sha256")))


# --- registry -------------------------------------------------------------------------------
def test_registry_covers_the_fifteen_models_with_table5_parameters():
  assert set(generation_models.MODELS) == set(EXPECTED_IDS)
  for name, spec in generation_models.MODELS.items():
    if EXPECTED_IDS[name]:
      assert spec.model_id == EXPECTED_IDS[name]
    assert (spec.steps, spec.guidance, spec.size, spec.cpu_offload) == TABLE5[name], name
    gen = generators.lookup(name)
    assert gen is not None and gen.name == name and gen.levels[1] == 1, name  # open-source
    assert spec.dtype in generation_models.DTYPES


@pytest.mark.parametrize("name", sorted(generation_models.MODELS))
def test_every_pipeline_class_takes_the_arguments_generate_passes(name):
  spec = generation_models.MODELS[name]
  cls = getattr(diffusers, spec.pipeline)
  accepted = inspect.signature(cls.__call__).parameters
  needed = {"prompt", "num_images_per_prompt", "num_inference_steps", "guidance_scale", "height",
            "width", "output_type", "generator", *dict(spec.call_kwargs)}
  if spec.negative_prompt:
    needed.add("negative_prompt")
    assert spec.guidance > 1, "a negative prompt only acts under classifier-free guidance"
  assert needed <= set(accepted), needed - set(accepted)
  components = set(inspect.signature(cls.__init__).parameters)
  assert {c.name for c in spec.components} <= components
  assert set(dict(spec.load_kwargs)) <= components


def test_registry_refuses_api_only_and_unknown_models_with_the_way_in():
  with pytest.raises(ValueError, match="API-only.*data_prep.ingest"):
    generation_models.get("dalle3")
  with pytest.raises(ValueError, match="no diffusers pipeline"):
    generation_models.get("janus-pro")
  with pytest.raises(ValueError, match="not a registered generator"):
    generation_models.get("imagen")
  assert generation_models.get("sdxl-base").name == "SDXL"  # aliases work
  assert "GLM_IMAGE" in generation_models.table()


# --- names and seeds ------------------------------------------------------------------------
def test_names_follow_the_official_rules_and_map_back_to_caption_ids():
  cap = captions.Caption("ImageNet-1k", 17, "a kimono")
  items = generate.make_items("SD3", [cap], 2, seed=0)
  assert [i.filename for i in items] == ["SD3_ImageNet-1k_p17_i0.png", "SD3_ImageNet-1k_p17_i1.png"]
  kept, ignored = sources.select_official([i.filename for i in items], "SD3")
  assert len(kept) == 2 and not ignored
  assert sources._caption_id("ImageNet-1k", items[1].filename) == cap.caption_id
  seeds = {generate.seed_for(m, c, k) for m in ("SD3", "SDXL") for c in ("cat/p0", "cat/p1")
           for k in (0, 1)}
  assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
  assert generate.seed_for("SD3", "cat/p0", 1) == generate.seed_for("SD3", "cat/p0", 1)
  assert generate.seed_for("SD3", "cat/p0", 1, base=1) != generate.seed_for("SD3", "cat/p0", 1)


# --- end to end -----------------------------------------------------------------------------
def test_sd_generates_records_with_full_metadata_and_the_official_png_tree(tmp_path, tiny):
  ds = run(tmp_path / "out", "SD1_5", tiny, "--semantics", "cat,COCO", "--per_class", "2",
           "--chunk_size", "1", "--png")
  assert len(ds) == 8 and ds.classes == ["SD1_5"] and not ds.verify(deep=True)
  assert sorted(ds.column("caption_id")) == sorted(
      f"{s}/p{p}" for s in ("cat", "COCO") for p in (0, 1) for _ in range(2))
  cat = captions.load(captions.PACKAGED_DIR, ["cat"])["cat"]
  rec = ds[0]
  assert rec.key == "SD1_5/cat/SD1_5_cat_p0_i0.png" and rec.caption == cat[0].text
  assert (rec.width, rec.height, rec.format, rec.semantic, rec.source) == (32, 32, "PNG", "cat",
                                                                          "AFHQ")
  assert rec.levels == generators.family_levels("SD1_5")
  assert rec.extra["negative_prompt"] == generation_models.NEGATIVE_PROMPT
  assert rec.extra["seed"] == generate.seed_for("SD1_5", "cat/p0", 0)
  assert (rec.extra["steps"], rec.extra["guidance"], rec.extra["model_id"]) == (
      2, 7.5, "runwayml/stable-diffusion-v1-5")
  assert rec.extra["real_image"] == cat[0].image_path
  assert list(ds.column("label")) == [0] * 8
  img = np.asarray(records.decode(rec))
  assert img.shape == (32, 32, 3) and img.std() > 0
  # --png keeps the official folder tree, which ingest reads back to the same images and ids.
  enum = sources.enumerate_tree(str(tmp_path / "out" / "png"))
  assert not enum.ignored
  by_key = {c.key: c for c in enum.candidates}
  assert set(by_key) == set(ds.column("key"))
  for i in range(len(ds)):
    r = ds[i]
    with open(by_key[r.key].path, "rb") as f:
      assert f.read() == r.image
    assert by_key[r.key].caption_id == r.caption_id


def test_seeds_make_images_reproducible(tmp_path, tiny):
  common = ("--semantics", "dog", "--per_class", "3")
  a = run(tmp_path / "a", "SD1_5", tiny, *common, "--batch_size", "1")
  again = run(tmp_path / "again", "SD1_5", tiny, *common, "--batch_size", "1")
  assert digests(a) == digests(again) and len(set(digests(a).values())) == 6
  # Another batch size draws the same noise; batched kernels may round differently, by a level.
  b = run(tmp_path / "b", "SD1_5", tiny, *common, "--batch_size", "4")
  for i in range(len(a)):
    x, y = (np.asarray(records.decode(ds[i]), np.int16) for ds in (a, b))
    assert np.abs(x - y).max() <= 1
  c = digests(run(tmp_path / "c", "SD1_5", tiny, *common, "--seed", "7"))
  assert set(digests(a)) == set(c) and not set(digests(a).values()) & set(c.values())


def test_a_killed_run_resumes_without_duplicates_or_gaps(tmp_path, tiny, monkeypatch):
  common = ("--semantics", "wild", "--per_class", "5", "--chunk_size", "2", "--batch_size", "2")
  reference = digests(run(tmp_path / "ref", "SD1_5", tiny, *common))
  calls = {"n": 0}
  real_render = generate.render

  def dies_on_fourth_batch(*a, **k):
    calls["n"] += 1
    if calls["n"] == 4:  # chunk 0 is packed, chunk 1 has half its images on disk
      raise KeyboardInterrupt
    return real_render(*a, **k)

  monkeypatch.setattr(generate, "render", dies_on_fourth_batch)
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    run(out, "SD1_5", tiny, *common)
  assert os.path.exists(generate.chunk_json(str(out), "SD1_5", 0))
  assert not os.path.exists(generate.chunk_json(str(out), "SD1_5", 1))
  staged = list((out / "png").rglob("*.png"))
  assert [p.name for p in staged] == ["SD1_5_wild_p2_i0.png", "SD1_5_wild_p2_i1.png"]
  assert not (out / records.DATASET_JSON).exists()
  monkeypatch.setattr(generate, "render", real_render)
  rendered = []
  monkeypatch.setattr(generate, "render",
                      lambda pipe, s, batch: rendered.extend(batch) or real_render(pipe, s, batch))
  ds = run(out, "SD1_5", tiny, *common)
  assert len(rendered) == 10 - 4 - 2  # only what had no file
  assert digests(ds) == reference and len(ds) == 10
  assert not list((out / "png").rglob("*.png"))  # staging files gone once packed


def test_shards_split_the_work_and_merge_into_the_union(tmp_path, tiny):
  common = ("--semantics", "cat,bedroom", "--per_class", "2", "--chunk_size", "1")
  whole = digests(run(tmp_path / "whole", "SD1_5", tiny, *common))
  shared = tmp_path / "shared"
  generate.main(["--model", "SD1_5", "--model_path", tiny["SD1_5"], "--out", str(shared), *FAST,
                 *common, "--num_shards", "2", "--shard_index", "0"])
  assert not (shared / records.DATASET_JSON).exists()  # shard 1 is still missing
  with pytest.raises(SystemExit, match="not every chunk"):
    generate.main(["--merge", "--out", str(shared)])
  ds = run(shared, "SD1_5", tiny, *common, "--num_shards", "2", "--shard_index", "1")
  assert digests(ds) == whole  # the last shard to finish writes the dataset
  # Separate machines: two OUT folders copied into one, then --merge.
  for i in range(2):
    generate.main(["--model", "SD1_5", "--model_path", tiny["SD1_5"],
                   "--out", str(tmp_path / f"m{i}"), *FAST, *common, "--num_shards", "2",
                   "--shard_index", str(i)])
  joined = tmp_path / "joined"
  for i in range(2):
    shutil.copytree(tmp_path / f"m{i}", joined, dirs_exist_ok=True)
  generate.main(["--merge", "--out", str(joined), "--quiet"])
  assert digests(records.Dataset(str(joined))) == whole


def test_environment_sets_the_shard_under_torchrun(monkeypatch):
  monkeypatch.setenv("WORLD_SIZE", "4")
  monkeypatch.setenv("RANK", "3")
  args = generate.parse_args(["--model", "SD1_5", "--out", "x"])
  assert (args.num_shards, args.shard_index) == (4, 3)


def test_a_rerun_with_other_settings_is_refused(tmp_path, tiny):
  common = ("--semantics", "cat", "--per_class", "1")
  run(tmp_path / "out", "SD1_5", tiny, *common)
  with pytest.raises(SystemExit, match=r"settings.steps: 2 -> 3"):
    generate.main(["--model", "SD1_5", "--model_path", tiny["SD1_5"], "--out",
                   str(tmp_path / "out"), *FAST, *common, "--steps", "3"])
  with pytest.raises(SystemExit, match="captions differ"):
    run(tmp_path / "out", "SD1_5", tiny, "--semantics", "cat", "--per_class", "2")


def test_dit_pipeline_and_dataset_merge(tmp_path, tiny):
  sd = run(tmp_path / "sd", "SD1_5", tiny, "--semantics", "FFHQ", "--per_class", "1")
  pixart = run(tmp_path / "pixart", "PIXART", tiny, "--semantics", "FFHQ,church",
               "--per_class", "1", "--images_per_caption", "1")
  assert len(pixart) == 2 and pixart.classes == ["PIXART"]
  rec = pixart[0]
  assert rec.extra["pipeline"] == "PixArtAlphaPipeline" and rec.extra["guidance"] == 6.0
  assert rec.extra["call_kwargs"] == {"use_resolution_binning": False}  # --size is not native
  assert np.asarray(records.decode(rec)).shape == (32, 32, 3)
  # Generation outputs join into one dataset with labels under the union's class order.
  merged = merge.merge(str(tmp_path / "all"), [str(tmp_path / "sd"), str(tmp_path / "pixart")],
                       quiet=True)
  ds = records.Dataset(str(tmp_path / "all"))
  assert merged["classes"] == ["PIXART", "SD1_5"] == ds.classes
  assert [ds[i].label for i in range(len(ds))] == list(ds.column("label")) == [1, 1, 0, 0]
  assert digests(ds) == {**digests(sd), **digests(pixart)}
  assert not ds.verify(deep=True)
  with pytest.raises(SystemExit, match="keys occur in more than one input"):
    merge.merge(str(tmp_path / "twice"), [str(tmp_path / "sd"), str(tmp_path / "sd")], quiet=True)


def test_cli_errors_name_the_problem(tmp_path, capsys):
  with pytest.raises(SystemExit, match="API-only"):
    generate.main(["--model", "mid-6.0", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="unknown semantic"):
    generate.main(["--model", "SD1_5", "--out", str(tmp_path), "--semantics", "cats"])
  with pytest.raises(SystemExit):
    generate.main(["--model", "SD1_5", "--out", str(tmp_path), "--num_shards", "2",
                   "--shard_index", "2"])
  assert "--shard_index must be in [0, 2)" in capsys.readouterr().err
  assert generate.main(["--model", "SD1_5", "--out", str(tmp_path), "--dry_run"]) == 0
  assert "20000 images" in capsys.readouterr().out  # 10 classes x 1000 captions x 2


def test_torchrun_processes_take_their_shards_from_the_environment(tmp_path, tiny):
  import subprocess
  import sys

  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "data_prep.generate", "--model", "SD1_5", "--model_path", tiny["SD1_5"],
         "--out", str(out), "--device", "cpu", "--semantics", "cat", "--per_class", "2",
         "--chunk_size", "1", *FAST]
  env = {**os.environ, "OMP_NUM_THREADS": "1"}
  done = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "process 0/2 has 1 chunks" in done.stdout and "process 1/2 has 1 chunks" in done.stdout
  ds = records.Dataset(str(out))
  assert sorted(ds.column("key")) == [f"SD1_5/cat/SD1_5_cat_p{p}_i{k}.png"
                                      for p in (0, 1) for k in (0, 1)]


@pytest.mark.parametrize("name", ["SDXL", "FLUX"])
def test_other_tiny_pipelines_run_the_same_path(tmp_path, name):
  path = tiny_pipelines.build(name, str(tmp_path / "tiny"))
  ds = run(tmp_path / "out", name, {name: path}, "--semantics", "church", "--per_class", "1",
           "--images_per_caption", "1")
  rec = ds[0]
  assert rec.generator == name and rec.extra["pipeline"] == generation_models.MODELS[name].pipeline
  # FLUX.1-schnell is guidance-distilled: the paper's negative prompt is not passed to it.
  assert bool(rec.extra["negative_prompt"]) == (name == "SDXL")
  assert np.asarray(records.decode(rec)).shape == (32, 32, 3)
