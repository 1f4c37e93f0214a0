"""Tests of data_prep.caption: prompts, selection, sharding, resume, privacy pass, CSV output.

The models are tiny, randomly initialised Qwen2.5-VL and Qwen2 built here from config, with a
byte-level tokenizer made offline. Their text is garbage, so the tests check structure, not
wording; to keep every caption non-empty, the output head favours letters, and a "silent" copy
with a zero head (it can only emit a special token) exercises the empty-caption path.
"""

import csv
import io
import json
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from data_prep import caption
from data_prep import captions
from iab_jax.data import generators
from iab_jax.data import records

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Real records per class. COCO's record 2 has no caption; ImageNet-1k holds 2 images of each of
# 3 wnids, and its record 0 has no class words.
COUNTS = {"cat": 5, "FFHQ": 3, "COCO": 4, "ImageNet-1k": 6}
LABELS = ["tench, Tinca tinca", "goldfish, Carassius auratus", "kimono"]
COMMON = ["--device", "cpu", "--dtype", "float32", "--quiet", "--max_new_tokens", "6"]

TABLE2_ANIMAL = (
    "Describe the face in the image with focus on facial features. Include details such as the "
    "shape and appearance of the eyes, nose, mouth, and ears, the color and texture of the skin or "
    "fur, facial expression, and any visible hair or fur. The description should clearly center on "
    "the face, with minimal reference to the background or body. Keep it vivid and concise, 20 to "
    "50 words.")
TABLE2_BEDROOM = (
    "Describe a bedroom scene in the image. Focus on the main elements typical of a bedroom, such "
    "as objects, layout, colors, and lighting. Avoid focusing on people or irrelevant details. The "
    "description should be visual and vivid, 20 to 50 words.")
TABLE2_KIMONO = (
    "Using the given label 'kimono' as guidance, describe the image in as much detail as possible, "
    "focusing on objects, setting, colors, actions, and mood. Incorporate elements related to the "
    "label. Keep the description between 20 and 50 words.")


# ---------------------------------------------------------------------------------------------
# Tiny models and a tiny real-image dataset.
# ---------------------------------------------------------------------------------------------
def _tokenizer():
  """A byte-level BPE tokenizer without merges: every text encodes, every id decodes."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
    vocab[char] = len(vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(SPECIAL_TOKENS)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>")
  fast.chat_template = CHAT_TEMPLATE
  return fast


def _favour_letters(lm_head, tokenizer, scale):
  """Zero output rows but the ASCII letters' (scaled random): greedy text is letters, or the
  lowest id, a special token, when every row is zero."""
  import torch

  weight = torch.zeros_like(lm_head.weight)
  if scale:
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    gen = torch.Generator().manual_seed(0)
    weight[letters] = scale * torch.randn(len(letters), weight.shape[1], generator=gen)
  with torch.no_grad():
    lm_head.weight.copy_(weight)


def _save_vlm(path, tokenizer, scale):
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  from transformers import Qwen2_5_VLProcessor
  from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
  from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
  config = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=1024, bos_token_id=None,
                       eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 1, 1]}),
      vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                         out_hidden_size=32, fullatt_block_indexes=[1], window_size=56),
      image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
      vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
  torch.manual_seed(0)
  model = Qwen2_5_VLForConditionalGeneration(config).eval()
  _favour_letters(model.lm_head, tokenizer, scale)
  model.generation_config.eos_token_id = ids["<|im_end|>"]
  model.generation_config.pad_token_id = ids["<|endoftext|>"]
  # 56x56 pixels per image: 16 patches of 14, merged 2x2 into 4 image tokens.
  processor = Qwen2_5_VLProcessor(
      image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
      tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
  model.save_pretrained(path)
  processor.save_pretrained(path)


def _save_llm(path, tokenizer):
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM

  config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=2048, tie_word_embeddings=False,
                       bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
  torch.manual_seed(1)
  model = Qwen2ForCausalLM(config).eval()
  _favour_letters(model.lm_head, tokenizer, 4.0)
  model.generation_config.eos_token_id = tokenizer.eos_token_id
  model.generation_config.pad_token_id = tokenizer.pad_token_id
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("caption_models")
  tokenizer = _tokenizer()
  paths = {name: str(root / name) for name in ("vlm", "silent_vlm", "llm")}
  _save_vlm(paths["vlm"], tokenizer, scale=4.0)
  _save_vlm(paths["silent_vlm"], tokenizer, scale=0.0)
  _save_llm(paths["llm"], tokenizer)
  return paths


def _png(seed, size=(12, 16)):
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "PNG")
  return buf.getvalue()


def _record(semantic, n, data=None):
  folder = generators.SEMANTICS[semantic][0]
  filename = f"{semantic.lower()}_{n:06d}.png"
  data = data if data is not None else _png(zlib.crc32(f"{semantic}/{n}".encode()))
  extra, text = {}, ""
  if semantic == "ImageNet-1k":
    extra = {"label": LABELS[n % 3] if n else "", "wnid": f"n0000000{n % 3}"}
  if semantic == "COCO":
    text = f"A photo number {n} of a street. " if n != 2 else ""
  return records.ImageRecord(
      image=data, key=f"real/{folder}/{filename}", generator="real", label=0,
      levels=generators.family_levels("real"), semantic=semantic,
      source=generators.SEMANTICS[semantic][1], width=16, height=12, format="PNG",
      sha256=records.sha256_bytes(data), caption=text, filename=filename, extra=extra)


def _write_real(root, counts, corrupt=()):
  recs = [_record(s, n, b"not an image" if (s, n) in corrupt else None)
          for s, k in counts.items() for n in range(k)]
  recs = recs[::-1]  # dataset order is not key order
  records.write_dataset(str(root), recs, ["real"])
  return str(root)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  return _write_real(tmp_path_factory.mktemp("real"), COUNTS)


def _run(real, out, *flags):
  return caption.main(["--real", real, "--out", str(out), *COMMON, *flags])


def _rows(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _progress(out, semantic):
  lines = []
  for name in sorted(os.listdir(os.path.join(out, caption.PROGRESS_DIR))):
    if name.startswith(f"{semantic}.shard"):
      with open(os.path.join(out, caption.PROGRESS_DIR, name), encoding="utf-8") as f:
        lines += [json.loads(line) for line in f]
  return lines


# ---------------------------------------------------------------------------------------------
# Prompts and selection.
# ---------------------------------------------------------------------------------------------
def test_prompts_are_table2_templates():
  templates = caption.default_templates()
  assert set(templates) == set(generators.SEMANTICS) - {"COCO"}
  for semantic in ("cat", "dog", "wild"):
    assert caption.build_prompt(semantic, templates) == TABLE2_ANIMAL
  assert caption.build_prompt("bedroom", templates) == TABLE2_BEDROOM
  assert caption.build_prompt("church", templates) == TABLE2_BEDROOM.replace("bedroom", "church")
  assert caption.build_prompt("ImageNet-1k", templates, "kimono") == TABLE2_KIMONO
  face = caption.build_prompt("FFHQ", templates)
  assert face == caption.build_prompt("celebahq", templates)
  assert face.startswith("Describe the face in the image by focusing only on general facial")
  assert "Do not mention names, identities, or any personally identifiable information." in face
  with pytest.raises(ValueError, match="COCO keeps its own captions"):
    caption.build_prompt("COCO", templates)


def test_template_overrides(tmp_path):
  path = tmp_path / "t.json"
  path.write_text(json.dumps({"cat": "Name the {label} cat {x}."}))
  templates = caption.load_templates(str(path))
  assert caption.build_prompt("cat", templates, "tabby") == "Name the tabby cat {x}."
  assert caption.build_prompt("dog", templates) == TABLE2_ANIMAL
  for bad, message in (({"cats": "x"}, "unknown semantic class 'cats'"),
                       ({"COCO": "x"}, "COCO is not captioned"), (["x"], "expected a JSON object")):
    path.write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match=message):
      caption.load_templates(str(path))
  path.write_text("{not json")
  with pytest.raises(SystemExit, match="not valid JSON"):
    caption.load_templates(str(path))


def test_privacy_prompt(tmp_path):
  assert "{caption}" in caption.PRIVACY_PROMPT
  assert caption.load_privacy_prompt(None) == caption.PRIVACY_PROMPT
  path = tmp_path / "p.txt"
  path.write_text("Remove names: {caption}\n")
  assert caption.load_privacy_prompt(str(path)) == "Remove names: {caption}"
  path.write_text("Remove names.")
  with pytest.raises(SystemExit, match="placeholder"):
    caption.load_privacy_prompt(str(path))


def test_selection_is_deterministic_and_shards_partition_it(real):
  ds = records.Dataset(real)
  chosen = caption.select(ds, ["cat", "COCO", "ImageNet-1k"], per_class=4, seed=0)
  assert chosen == caption.select(ds, ["cat", "COCO", "ImageNet-1k"], per_class=4, seed=0)
  # A class's choice does not depend on the other classes, and a smaller per_class is a prefix.
  assert caption.select(ds, ["cat"], per_class=4, seed=0)["cat"] == chosen["cat"]
  assert caption.select(ds, ["cat"], per_class=2, seed=0)["cat"] == chosen["cat"][:2]
  cat_keys = sorted(k for k in ds.column("key") if "/cat/" in k)
  assert len(chosen["cat"]) == 4 and {it.key for it in chosen["cat"]} < set(cat_keys)
  assert [it.key for it in caption.select(ds, ["cat"], 5, 0)["cat"]] != cat_keys  # permuted
  other_seeds = [[it.key for it in caption.select(ds, ["cat"], 5, s)["cat"]] for s in (1, 2)]
  assert [it.key for it in caption.select(ds, ["cat"], 5, 0)["cat"]] not in other_seeds
  for it in chosen["cat"]:
    assert ds[it.position].key == it.key
  by_key = {it.key: it for it in chosen["ImageNet-1k"] + chosen["COCO"]}
  for i, key in enumerate(ds.column("key")):
    if key in by_key and "ImageNet" in key:
      assert by_key[key].label == json.loads(ds.column("extra")[i])["label"]
    elif key in by_key:
      assert by_key[key].caption == ds.column("caption")[i].strip()
  # ImageNet-1k: every wnid once before any twice.
  imagenet = caption.select(ds, ["ImageNet-1k"], per_class=6, seed=0)["ImageNet-1k"]
  wnids = {k: json.loads(e).get("wnid") for k, e in zip(ds.column("key"), ds.column("extra"))}
  assert sorted(wnids[it.key] for it in imagenet[:3]) == [f"n0000000{n}" for n in range(3)]
  assert sorted(wnids[it.key] for it in imagenet[3:]) == [f"n0000000{n}" for n in range(3)]
  for n in (1, 2, 3):
    shards = [caption.shard_items(chosen["cat"], n, i) for i in range(n)]
    keys = [it.key for shard in shards for it in shard]
    assert len(keys) == len(set(keys)) == 4 and set(keys) == {it.key for it in chosen["cat"]}


# ---------------------------------------------------------------------------------------------
# The model backends.
# ---------------------------------------------------------------------------------------------
def test_chat_input_holds_image_and_prompt_padded_left(models):
  vlm = caption.VisionLanguageCaptioner(models["vlm"], "cpu", "float32")
  text = vlm.chat_text(TABLE2_ANIMAL)
  assert text.endswith(f"<|vision_start|><|image_pad|><|vision_end|>{TABLE2_ANIMAL}<|im_end|>\n"
                       "<|im_start|>assistant\n")
  images = [Image.open(io.BytesIO(_png(i))) for i in range(2)]
  inputs = vlm.processor(text=[vlm.chat_text("a"), vlm.chat_text("a longer prompt")],
                         images=images, padding=True, return_tensors="pt")
  mask = inputs["attention_mask"].numpy()
  assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
  outputs = vlm(images, ["a", "a longer prompt"], max_new_tokens=5)
  assert len(outputs) == 2 and all(o.isalpha() and len(o) == 5 for o in outputs)
  llm = caption.PrivacyFilter(models["llm"], "cpu", "float32", "Clean: {caption}")
  assert "<|im_start|>user\nClean: a red face<|im_end|>" in llm.chat_text("a red face")
  assert all(o.isalpha() for o in llm(["a red face", "b"], max_new_tokens=4))


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------
def test_captions_written_in_authors_format(models, real, tmp_path):
  out = tmp_path / "out"
  assert _run(real, out, "--model_id", models["vlm"], "--semantics", "cat,COCO,ImageNet-1k",
              "--per_class", "4", "--batch_size", "3") == 0
  ds = records.Dataset(real)
  chosen = caption.select(ds, ["cat", "COCO", "ImageNet-1k"], per_class=4, seed=0)

  loaded = captions.load(str(out))
  assert list(loaded) == ["cat", "COCO", "ImageNet-1k"]
  assert sorted(os.listdir(out)) == sorted(
      ["AnimalFace_cat.csv", "COCO-new.csv", "imagenet-1k-new.csv", caption.REPORT_JSON,
       caption.PROGRESS_DIR])
  assert list(_rows(out / "AnimalFace_cat.csv")[0]) == ["ImgPath", "Caption"]
  assert list(_rows(out / "imagenet-1k-new.csv")[0]) == ["ImgPath", "Label", "Caption"]

  # cat: every selected image captioned, in selection order, ImgPath = the record key.
  cats = loaded["cat"]
  assert [c.image_path for c in cats] == [it.key for it in chosen["cat"]]
  assert [c.caption_id for c in cats] == [f"cat/p{p}" for p in range(4)]
  assert cats[0].image_name == os.path.basename(chosen["cat"][0].key)
  # COCO keeps its own captions; its record without caption is left out and reported.
  coco_kept = [it for it in chosen["COCO"] if it.caption]
  assert [(c.image_path, c.text) for c in loaded["COCO"]] == [(it.key, it.caption)
                                                             for it in coco_kept]
  # ImageNet-1k: Label = the class words; the record without them is left out.
  labelled = [it for it in chosen["ImageNet-1k"] if it.label]
  assert len(labelled) == 3  # the selection holds the record without class words
  assert [(c.image_path, c.label) for c in loaded["ImageNet-1k"]] == [(it.key, it.label)
                                                                     for it in labelled]
  assert [c.caption_id for c in loaded["ImageNet-1k"]] == [f"ImageNet-1k/p{p}"
                                                           for p in range(len(labelled))]

  report = json.loads((out / caption.REPORT_JSON).read_text())
  assert report["cat"] == {"file": "AnimalFace_cat.csv", "selected": 4, "written": 4,
                           "left_out": []}
  assert [e["status"] for e in report["COCO"]["left_out"]] == ["no_caption"] * (4 - len(coco_kept))
  assert ([e["status"] for e in report["ImageNet-1k"]["left_out"]]
          == ["no_label"] * (4 - len(labelled)))

  # The progress files hold the Table 2 prompt of each image and the raw output.
  templates = caption.default_templates()
  for semantic in ("cat", "ImageNet-1k"):
    entries = {e["key"]: e for e in _progress(out, semantic) if e["status"] == "ok"}
    for c in loaded[semantic]:
      entry = entries[c.image_path]
      assert entry["prompt"] == caption.build_prompt(semantic, templates, c.label)
      assert entry["caption"] == c.text == caption.collapse_whitespace(entry["raw"])
      assert c.text.isalpha() and "pre_privacy" not in entry
  assert "prompt" not in _progress(out, "COCO")[0]

  # A later run of one class rewrites its file and keeps the other classes in the report.
  _run(real, out, "--model_id", models["vlm"], "--semantics", "cat", "--per_class", "4")
  assert json.loads((out / caption.REPORT_JSON).read_text()) == report
  assert captions.load(str(out)) == loaded


def test_resume_after_kill_has_no_duplicates_or_gaps(models, real, tmp_path, monkeypatch):
  flags = ["--model_id", models["vlm"], "--semantics", "cat", "--per_class", "5",
           "--batch_size", "2"]
  _run(real, tmp_path / "whole", *flags)

  appended = caption.append_entries

  def append_then_die(path, entries):
    appended(path, entries)
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(caption, "append_entries", append_then_die)
  out = tmp_path / "killed"
  with pytest.raises(KeyboardInterrupt):
    _run(real, out, *flags)
  monkeypatch.setattr(caption, "append_entries", appended)
  progress = out / caption.PROGRESS_DIR / "cat.shard0.jsonl"
  assert len(progress.read_text().splitlines()) == 2  # the first batch is safe
  assert not (out / "AnimalFace_cat.csv").exists()
  with open(progress, "a") as f:  # a kill in the middle of writing the next batch
    f.write('{"key": "real/AnimalFace/cat/cat_0000')

  _run(real, out, *flags)
  keys = [json.loads(line)["key"] for line in progress.read_text().splitlines()]
  chosen = caption.select(records.Dataset(real), ["cat"], 5, 0)["cat"]
  assert len(keys) == len(set(keys)) == 5 and set(keys) == {it.key for it in chosen}
  assert (out / "AnimalFace_cat.csv").read_bytes() == (tmp_path / "whole" /
                                                       "AnimalFace_cat.csv").read_bytes()
  _run(real, out, *flags)  # a finished run does nothing again
  assert len(progress.read_text().splitlines()) == 5


def test_shards_then_merge(models, real, tmp_path, capsys):
  out = tmp_path / "out"
  flags = ["--model_id", models["vlm"], "--semantics", "cat,COCO", "--per_class", "5",
           "--num_shards", "2"]
  _run(real, out, *flags, "--shard_index", "0")
  assert not (out / "AnimalFace_cat.csv").exists()  # N > 1: no automatic merge
  with pytest.raises(SystemExit, match=r"cat: 2 of 5 images .*shard\(s\) \[1\] of 2"):
    _run(real, out, *flags, "--merge")
  _run(real, out, *flags, "--shard_index", "1")
  shard_keys = [{e["key"] for e in _progress_file(out, "cat", i)} for i in (0, 1)]
  assert len(shard_keys[0]) == 3 and len(shard_keys[1]) == 2 and not shard_keys[0] & shard_keys[1]
  _run(real, out, "--semantics", "cat,COCO", "--per_class", "5", "--num_shards", "2", "--merge")
  chosen = caption.select(records.Dataset(real), ["cat", "COCO"], 5, 0)
  loaded = captions.load(str(out))
  assert [c.image_path for c in loaded["cat"]] == [it.key for it in chosen["cat"]]
  assert [c.text for c in loaded["COCO"]] == [it.caption for it in chosen["COCO"] if it.caption]


def _progress_file(out, semantic, shard):
  with open(out / caption.PROGRESS_DIR / f"{semantic}.shard{shard}.jsonl") as f:
    return [json.loads(line) for line in f]


def test_privacy_pass_cleans_face_captions_only(models, real, tmp_path):
  out = tmp_path / "out"
  _run(real, out, "--model_id", models["vlm"], "--semantics", "FFHQ,cat", "--per_class", "2",
       "--privacy", "--privacy_model_id", models["llm"], "--privacy_classes", "FFHQ")
  faces = captions.load(str(out))["FFHQ"]
  entries = {e["key"]: e for e in _progress(out, "FFHQ")}
  assert len(faces) == 2
  for c in faces:
    entry = entries[c.image_path]
    assert entry["pre_privacy"] == caption.collapse_whitespace(entry["raw"])
    assert entry["caption"] == c.text and c.text.isalpha()
  assert all("pre_privacy" not in e for e in _progress(out, "cat"))
  settings = json.loads((out / caption.PROGRESS_DIR / caption.SETTINGS_JSON).read_text())
  assert settings["privacy"] == {"model_id": models["llm"], "prompt": caption.PRIVACY_PROMPT,
                                 "classes": ["FFHQ"]}


def test_empty_and_unreadable_images_are_left_out(models, tmp_path):
  real = _write_real(tmp_path / "real", {"cat": 3}, corrupt={("cat", 1)})
  out = tmp_path / "out"
  _run(real, out, "--model_id", models["silent_vlm"])
  statuses = {e["key"]: e["status"] for e in _progress(out, "cat")}
  assert statuses == {"real/AnimalFace/cat/cat_000000.png": "empty",
                      "real/AnimalFace/cat/cat_000001.png": "unreadable",
                      "real/AnimalFace/cat/cat_000002.png": "empty"}
  assert _rows(out / "AnimalFace_cat.csv") == []
  report = json.loads((out / caption.REPORT_JSON).read_text())["cat"]
  assert report["written"] == 0 and len(report["left_out"]) == 3
  assert "cannot identify image" in next(e["reason"] for e in report["left_out"]
                                         if e["status"] == "unreadable")


def test_clear_errors(models, real, tmp_path, capsys):
  with pytest.raises(SystemExit, match="dataset.json is missing"):
    _run(str(tmp_path / "nowhere"), tmp_path / "out")
  with pytest.raises(SystemExit, match="unknown semantic class.*'kitten'"):
    _run(real, tmp_path / "out", "--semantics", "cat,kitten")
  with pytest.raises(SystemExit, match=r"has no real images of \['church'\]"):
    _run(real, tmp_path / "out", "--semantics", "church")
  with pytest.raises(SystemExit, match="cannot load the captioning processor"):
    _run(real, tmp_path / "out", "--semantics", "cat", "--model_id", str(tmp_path / "no_model"))
  with pytest.raises(SystemExit, match="max_new_tokens differ"):
    _run(real, tmp_path / "out", "--semantics", "cat", "--max_new_tokens", "9")
  with pytest.raises(SystemExit):
    _run(real, tmp_path / "out", "--num_shards", "2", "--shard_index", "2")
  assert "--shard_index must be in [0, 2)" in capsys.readouterr().err
