"""Captions the sampled real images with a vision-language model (benchmark construction, step 2).

  python -m data_prep.caption --real DATASET --out DIR [--model_id Qwen/Qwen2.5-VL-7B-Instruct]
      [--semantics cat,dog,...] [--per_class 1000] [--seed 0] [--batch_size 8]
      [--max_new_tokens 128] [--device auto|cpu|cuda[:i]] [--dtype auto|bfloat16|float16|float32]
      [--templates FILE.json] [--privacy] [--privacy_model_id meta-llama/Llama-3.1-8B-Instruct]
      [--privacy_prompt FILE] [--privacy_classes FFHQ,celebahq]
      [--num_shards N --shard_index I] [--merge] [--quiet]

DATASET is the real-image dataset of `python -m data_prep.sample_real`. As in the paper (§3.2,
appendices A and B):
- per semantic class, `--per_class` images are chosen: the class's real records sorted by key,
  permuted by a numpy Generator seeded with (seed, crc32(class)), the first `per_class` kept. The
  order of that permutation is the caption order, and a smaller `--per_class` keeps a prefix.
  ImageNet-1k's permutation is then reordered to take one image of every class (wnid) before a
  second of any, so that its 1000 captions cover the 1000 classes, as the authors' file does;
- each image is captioned with its class's prompt template of the paper's Table 2 (Human Face for
  FFHQ and celebahq, Animal Face for cat/dog/wild, Scene for bedroom/church/classroom, the
  ImageNet-1k template with the record's class words); `--templates FILE.json` replaces the
  templates of the classes it names ({"cat": "Describe ..."}; `{scene_label}` and `{label}` are
  filled in). COCO is not captioned: its own caption is kept;
- with `--privacy`, the face captions then go through a text-only LLM (the authors used
  Llama-3.1-8B) that removes names, identities and personally identifying details. The default
  instruction is PRIVACY_PROMPT; `--privacy_prompt FILE` replaces it (`{caption}` marks where the
  caption goes).

The model is any Hugging Face model that `AutoModelForImageTextToText` loads, by hub id or local
directory, driven through its processor's chat template (greedy decoding, batches padded on the
left). The paper used QwenVL-Chat, whose remote code does not run on transformers 5; the default is
its successor Qwen2.5-VL-7B-Instruct. The paper's Table 4 shows the VLM choice barely changes
caption quality.

Output, in DIR:
  {captions.file_name(class)}   one CSV per class in the authors' columns (ImgPath = record key,
                                Caption, Label for ImageNet-1k), rows in selection order; row P is
                                caption `{class}/p{P}`
  caption_report.json           per class: selected, written, and every image left out and why
  progress/{class}.shard{I}.jsonl   every finished image: key, ImgPath, prompt, raw VLM output,
                                caption (+ pre_privacy caption when the privacy pass ran), status
  progress/settings.json        the settings the captions were made with; a rerun must match

Resumable: each batch is appended to the progress file and fsynced, so a killed run (SIGKILL
included) redoes at most one batch when started again. Sharded: shard I of N captions the selected
images at positions P with P % N == I; `--merge` (implied when N == 1) checks that every selected
image is done and writes the CSVs. Images that cannot be captioned (unreadable image, a COCO record
without caption, an ImageNet-1k record without class words, an empty model output) are left out
and listed in caption_report.json; the other captions still fill rows 0, 1, ... in order. Their
progress lines count as done: delete those lines to try them again.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import re
import sys
import time
from typing import Any, Sequence

import numpy as np

from data_prep import captions, ingest, split
from iab_jax.data import generators, records

DEFAULT_MODEL_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_PRIVACY_MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_PRIVACY_CLASSES = ("FFHQ", "celebahq")
PROGRESS_DIR = "progress"
SETTINGS_JSON = "settings.json"
REPORT_JSON = "caption_report.json"
UNCAPTIONED = "COCO"  # the paper keeps COCO's own captions
LABELLED = "ImageNet-1k"  # its template and its Label column need the record's class words

# The paper's Table 2, verbatim: one template per group of semantic classes.
TEMPLATES: dict[str, str] = {
    "Human Face": (
        "Describe the face in the image by focusing only on general facial features. Include "
        "aspects such as the shape and appearance of the eyes, nose, mouth, and ears, the color "
        "and texture of the skin or fur, facial expression, and any visible hair or fur. Do not "
        "mention names, identities, or any personally identifiable information. The description "
        "should clearly center on the face, with minimal reference to the background or body. "
        "Keep it vivid and concise, 20 to 50 words."),
    "Animal Face": (
        "Describe the face in the image with focus on facial features. Include details such as "
        "the shape and appearance of the eyes, nose, mouth, and ears, the color and texture of "
        "the skin or fur, facial expression, and any visible hair or fur. The description should "
        "clearly center on the face, with minimal reference to the background or body. Keep it "
        "vivid and concise, 20 to 50 words."),
    "Scene": (
        "Describe a {scene_label} scene in the image. Focus on the main elements typical of a "
        "{scene_label}, such as objects, layout, colors, and lighting. Avoid focusing on people or "
        "irrelevant details. The description should be visual and vivid, 20 to 50 words."),
    "ImageNet-1k": (
        "Using the given label '{label}' as guidance, describe the image in as much detail as "
        "possible, focusing on objects, setting, colors, actions, and mood. Incorporate elements "
        "related to the label. Keep the description between 20 and 50 words."),
}
TEMPLATE_GROUPS: dict[str, str] = {
    "FFHQ": "Human Face", "celebahq": "Human Face",
    "cat": "Animal Face", "dog": "Animal Face", "wild": "Animal Face",
    "bedroom": "Scene", "church": "Scene", "classroom": "Scene",
    "ImageNet-1k": "ImageNet-1k",
}
SCENE_LABELS = {"bedroom": "bedroom", "church": "church", "classroom": "classroom"}

# Appendix A names the privacy pass but does not publish its instruction; this one is ours.
PRIVACY_PROMPT = (
    "The text below describes a face in a photograph; it will be the prompt of an image "
    "generator. Remove from it any names, any statement of who the person is (identity, "
    "celebrity, role or affiliation), and any personally identifying details such as readable "
    "text, name tags or unique marks tied to a known person. Keep every other word as it is, "
    "including the description of the facial features, and do not add anything. Reply with the "
    "resulting description only, without quotes or comments.\n\nDescription: {caption}")

LEFT_OUT_REASONS = {
    "empty": "the model's caption was empty",
    "empty_after_privacy": "the privacy pass returned an empty caption",
    "no_caption": "the COCO record carries no caption",
    "no_label": "the ImageNet-1k record carries no class words (extra['label'])",
    "unreadable": "the image could not be decoded",
}


# ---------------------------------------------------------------------------------------------
# Prompts.
# ---------------------------------------------------------------------------------------------
def default_templates() -> dict[str, str]:
  """Class -> prompt template, from the paper's Table 2 (COCO has none)."""
  return {semantic: TEMPLATES[group] for semantic, group in TEMPLATE_GROUPS.items()}


def load_templates(path: str | None) -> dict[str, str]:
  """Table 2's templates, with those of the classes a JSON file maps to a template replaced."""
  templates = default_templates()
  if path is None:
    return templates
  try:
    with open(path, encoding="utf-8") as f:
      overrides = json.load(f)
  except OSError as e:
    raise SystemExit(f"error: --templates {path}: cannot read it ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise SystemExit(f"error: --templates {path}: not valid JSON ({e})") from None
  if not isinstance(overrides, dict) or not all(isinstance(v, str) and v.strip()
                                                for v in overrides.values()):
    raise SystemExit(f"error: --templates {path}: expected a JSON object mapping semantic class "
                     'to a non-empty template, e.g. {"cat": "Describe the cat..."}')
  for semantic in overrides:
    if semantic == UNCAPTIONED:
      raise SystemExit(f"error: --templates {path}: COCO is not captioned (its own captions "
                       "are kept); remove it")
    if semantic not in templates:
      raise SystemExit(f"error: --templates {path}: unknown semantic class {semantic!r}; "
                       f"expected some of {', '.join(templates)}")
  return {**templates, **overrides}


def build_prompt(semantic: str, templates: dict[str, str], label: str = "") -> str:
  """The captioning prompt of one image: its class's template with the scene or class words."""
  if semantic not in templates:
    raise ValueError(f"no prompt template for semantic class {semantic!r}"
                     + (" (COCO keeps its own captions)" if semantic == UNCAPTIONED else ""))
  # str.replace, not str.format: a user's template may contain other braces.
  return (templates[semantic].replace("{scene_label}", SCENE_LABELS.get(semantic, semantic))
          .replace("{label}", label))


def load_privacy_prompt(path: str | None) -> str:
  if path is None:
    return PRIVACY_PROMPT
  try:
    with open(path, encoding="utf-8") as f:
      prompt = f.read().strip()
  except OSError as e:
    raise SystemExit(f"error: --privacy_prompt {path}: cannot read it ({e.strerror})") from None
  if "{caption}" not in prompt:
    raise SystemExit(f"error: --privacy_prompt {path}: the prompt must contain the placeholder "
                     "{caption}, where the caption to clean goes")
  return prompt


def collapse_whitespace(text: str) -> str:
  return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Selection.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Item:
  """One selected real image."""

  semantic: str
  key: str  # the record key, also the ImgPath of its caption
  position: int  # in dataset order
  label: str = ""  # ImageNet-1k class words
  caption: str = ""  # COCO's own caption


def real_classes(ds: records.Dataset) -> list[str]:
  """The semantic classes with real records, in the benchmark's class order."""
  present = set(ds.column("semantic")[ds.column("generator") == "real"])
  return [s for s in generators.SEMANTIC_ORDER if s in present]


def select(ds: records.Dataset, semantics: Sequence[str], per_class: int,
           seed: int) -> dict[str, list[Item]]:
  """Per class, the images to caption, in caption order (see the module docstring)."""
  generator, semantic_col = ds.column("generator"), ds.column("semantic")
  keys, coco_captions, extras = ds.column("key"), ds.column("caption"), ds.column("extra")
  selection = {}
  for semantic in semantics:
    members = np.flatnonzero((generator == "real") & (semantic_col == semantic))
    members = members[np.argsort(keys[members], kind="stable")]
    # (seed, class) only: a class's choice does not depend on which other classes run.
    members = members[split.class_rng(seed, semantic).permutation(len(members))]
    extra = [json.loads(extras[i]) if semantic == LABELLED else {} for i in members]
    if semantic == LABELLED:
      order = spread_over_labels([e.get("wnid") or e.get("label") for e in extra])
      members, extra = members[order], [extra[j] for j in order]
    items = []
    for i, e in zip(members[:per_class], extra):
      items.append(Item(semantic, str(keys[i]), int(i), str(e.get("label") or "").strip(),
                        str(coco_captions[i] or "").strip() if semantic == UNCAPTIONED else ""))
    selection[semantic] = items
  return selection


def spread_over_labels(labels: Sequence[Any]) -> np.ndarray:
  """A stable reordering that takes every label's first image before any label's second one.

  The authors' final ImageNet-1k file holds one caption per class; sampled at 2 images per wnid,
  1000 images chosen this way cover all 1000 classes once.
  """
  seen: collections.Counter = collections.Counter()
  rank = []
  for label in labels:
    rank.append(seen[label])
    seen[label] += 1
  return np.argsort(np.asarray(rank, dtype=np.int64), kind="stable")


def shard_items(items: Sequence[Item], num_shards: int, shard_index: int) -> list[Item]:
  """Shard I of N: the items at positions P with P % N == I (so shards stay balanced)."""
  return list(items[shard_index::num_shards])


def parse_classes(text: str, flag: str) -> list[str]:
  names = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in names if s not in generators.SEMANTICS]
  if unknown or not names:
    raise SystemExit(f"error: {flag}: unknown semantic class(es) {unknown or [text]}; expected "
                     f"a comma-separated list of {', '.join(generators.SEMANTICS)}")
  return names


# ---------------------------------------------------------------------------------------------
# Progress files: one JSON line per finished image.
# ---------------------------------------------------------------------------------------------
def progress_path(out: str, semantic: str, shard_index: int) -> str:
  return os.path.join(out, PROGRESS_DIR, f"{semantic}.shard{shard_index}.jsonl")


def read_progress(path: str, repair: bool = False) -> dict[str, dict[str, Any]]:
  """Entries by key. A last line without its newline (a run killed while writing) is ignored;
  with repair=True it is also cut off the file, so that the next append starts on a fresh line."""
  with open(path, "rb") as f:
    data = f.read()
  complete, _, partial = data.rpartition(b"\n")
  if partial and repair:
    os.truncate(path, len(data) - len(partial))
  entries = {}
  for n, line in enumerate(complete.splitlines()):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      print(f"warning: {path} line {n + 1} is not valid JSON; its image will be captioned again",
            file=sys.stderr)
      continue
    entries[entry["key"]] = entry
  return entries


def read_class_progress(out: str, semantic: str, own: str | None = None) -> dict[str, dict]:
  """Entries of every shard file of a class (so a change of --num_shards loses nothing)."""
  entries = {}
  for path in sorted(glob.glob(os.path.join(out, PROGRESS_DIR, f"{semantic}.shard*.jsonl"))):
    entries.update(read_progress(path, repair=path == own))
  return entries


def append_entries(path: str, entries: Sequence[dict[str, Any]]) -> None:
  """Appends one batch and makes it durable before the next batch starts."""
  with open(path, "a", encoding="utf-8") as f:
    f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    f.flush()
    os.fsync(f.fileno())


def check_settings(out: str, settings: dict[str, Any], fields: Sequence[str]) -> None:
  """Stores the settings on the first run; later runs must agree on `fields`."""
  path = os.path.join(out, PROGRESS_DIR, SETTINGS_JSON)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    differing = [k for k in fields if stored.get(k) != settings.get(k)]
    if differing:
      raise SystemExit(
          f"error: {out} holds captions made with other settings ({', '.join(differing)} "
          f"differ: stored {[stored.get(k) for k in differing]!s:.200}, now "
          f"{[settings.get(k) for k in differing]!s:.200}); use a new --out or delete it to start "
          "again")
    return
  # Shards may start together; each writes the same content.
  ingest.atomic_json(path, dict(sorted(settings.items())), indent=1)


# ---------------------------------------------------------------------------------------------
# Models (torch and transformers are imported only here).
# ---------------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
  import torch

  if device == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  if device.startswith("cuda") and not torch.cuda.is_available():
    raise SystemExit(f"error: --device {device}: no CUDA device is visible")
  return device


def resolve_dtype(dtype: str, device: str):
  import torch

  if dtype == "auto":  # bfloat16 where the accelerator has it; CPUs are slow in half precision
    use_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if use_bf16 else torch.float32
  return getattr(torch, dtype)


def _load_pretrained(loader, model_id: str, what: str, **kwargs):
  try:
    return loader.from_pretrained(model_id, **kwargs)
  except (OSError, ValueError, KeyError) as e:
    raise SystemExit(f"error: cannot load the {what} {model_id!r} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); pass a hub id or a local "
                     "directory that from_pretrained reads") from None


class VisionLanguageCaptioner:
  """An image-text-to-text model and its processor: images + prompts -> raw generated text."""

  def __init__(self, model_id: str, device: str, dtype: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    self.device = resolve_device(device)
    self.processor = _load_pretrained(AutoProcessor, model_id, "captioning processor")
    self.model = _load_pretrained(AutoModelForImageTextToText, model_id, "captioning model",
                                  dtype=resolve_dtype(dtype, self.device))
    self.model.to(self.device).eval()
    _pad_left(self.processor.tokenizer)

  def chat_text(self, prompt: str) -> str:
    """The model's chat-formatted input for one image and its prompt."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

  def __call__(self, images: Sequence[Any], prompts: Sequence[str],
               max_new_tokens: int) -> list[str]:
    import torch

    inputs = self.processor(text=[self.chat_text(p) for p in prompts], images=list(images),
                            padding=True, return_tensors="pt")
    inputs = inputs.to(self.model.device, dtype=self.model.dtype)  # casts floats only
    with torch.inference_mode():
      out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


class PrivacyFilter:
  """A text-only chat LLM that rewrites captions without personally identifying content."""

  def __init__(self, model_id: str, device: str, dtype: str, prompt: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    self.device = resolve_device(device)
    self.prompt = prompt
    self.tokenizer = _load_pretrained(AutoTokenizer, model_id, "privacy tokenizer")
    self.model = _load_pretrained(AutoModelForCausalLM, model_id, "privacy model",
                                  dtype=resolve_dtype(dtype, self.device))
    self.model.to(self.device).eval()
    _pad_left(self.tokenizer)

  def chat_text(self, caption: str) -> str:
    messages = [{"role": "user", "content": self.prompt.replace("{caption}", caption)}]
    return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

  def __call__(self, texts: Sequence[str], max_new_tokens: int) -> list[str]:
    import torch

    # The chat template already holds any BOS token the model wants.
    inputs = self.tokenizer([self.chat_text(t) for t in texts], padding=True, return_tensors="pt",
                            add_special_tokens=False).to(self.model.device)
    with torch.inference_mode():
      out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                       skip_special_tokens=True)


def _pad_left(tokenizer) -> None:
  # Generation continues every row from its last position, so padding must come first.
  tokenizer.padding_side = "left"
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token


@dataclasses.dataclass
class Settings:
  """What captioning needs besides the images; models load on first use."""

  model_id: str = DEFAULT_MODEL_ID
  templates: dict[str, str] = dataclasses.field(default_factory=default_templates)
  max_new_tokens: int = 128
  batch_size: int = 8
  device: str = "auto"
  dtype: str = "auto"
  privacy_model_id: str | None = None  # None: no privacy pass
  privacy_prompt: str = PRIVACY_PROMPT
  privacy_classes: tuple[str, ...] = DEFAULT_PRIVACY_CLASSES
  _captioner: VisionLanguageCaptioner | None = dataclasses.field(default=None, init=False,
                                                                 repr=False)
  _privacy: PrivacyFilter | None = dataclasses.field(default=None, init=False, repr=False)

  def captioner(self) -> VisionLanguageCaptioner:
    if self._captioner is None:
      self._captioner = VisionLanguageCaptioner(self.model_id, self.device, self.dtype)
    return self._captioner

  def privacy(self) -> PrivacyFilter:
    if self._privacy is None:
      self._privacy = PrivacyFilter(self.privacy_model_id, self.device, self.dtype,
                                    self.privacy_prompt)
    return self._privacy

  def uses_privacy(self, semantic: str) -> bool:
    return self.privacy_model_id is not None and semantic in self.privacy_classes

  def record(self) -> dict[str, Any]:
    """The settings that decide caption content, stored with the progress."""
    privacy = None
    if self.privacy_model_id is not None:
      privacy = {"model_id": self.privacy_model_id, "prompt": self.privacy_prompt,
                 "classes": list(self.privacy_classes)}
    return {"model_id": self.model_id, "templates": self.templates,
            "max_new_tokens": self.max_new_tokens, "privacy": privacy}


# ---------------------------------------------------------------------------------------------
# Captioning one shard.
# ---------------------------------------------------------------------------------------------
def _entry(item: Item, status: str = "ok", **fields: Any) -> dict[str, Any]:
  entry = {"key": item.key, "ImgPath": item.key, "status": status}
  if item.semantic == LABELLED:
    entry["label"] = item.label
  return {**entry, **fields}


def coco_entries(batch: Sequence[Item]) -> list[dict[str, Any]]:
  return [_entry(it, caption=it.caption) if it.caption else _entry(it, "no_caption")
          for it in batch]


def caption_batch(ds: records.Dataset, batch: Sequence[Item],
                  settings: Settings) -> list[dict[str, Any]]:
  """Progress entries of one batch of one class: VLM captions, then the privacy pass."""
  entries, ready, images = [], [], []
  for item in batch:
    if item.semantic == LABELLED and not item.label:
      entries.append(_entry(item, "no_label"))
      continue
    try:
      images.append(records.decode(ds[item.position]))
    except Exception as e:  # a corrupt record costs its image, not the run
      entries.append(_entry(item, "unreadable", reason=f"{type(e).__name__}: {e}"))
      continue
    ready.append(item)
  if not ready:
    return entries
  prompts = [build_prompt(it.semantic, settings.templates, it.label) for it in ready]
  raw = settings.captioner()(images, prompts, settings.max_new_tokens)
  texts = [collapse_whitespace(r) for r in raw]
  done = [_entry(it, "ok" if text else "empty", prompt=prompt, raw=r, caption=text)
          for it, prompt, r, text in zip(ready, prompts, raw, texts)]
  to_clean = [e for e in done if e["status"] == "ok"]
  if to_clean and settings.uses_privacy(ready[0].semantic):
    cleaned = settings.privacy()([e["caption"] for e in to_clean], settings.max_new_tokens)
    for e, text in zip(to_clean, cleaned):
      e["pre_privacy"], e["caption"] = e["caption"], collapse_whitespace(text)
      if not e["caption"]:
        e["status"] = "empty_after_privacy"
  return entries + done


def run_shard(ds: records.Dataset, selection: dict[str, list[Item]], out: str,
              settings: Settings, num_shards: int = 1, shard_index: int = 0,
              quiet: bool = False) -> dict[str, collections.Counter]:
  """Captions this shard's selected images that no progress file holds yet.

  Returns per class the statuses of the images done by this run ("skipped": done before).
  """
  stats: dict[str, collections.Counter] = {}
  todo: dict[str, list[Item]] = {}
  os.makedirs(os.path.join(out, PROGRESS_DIR), exist_ok=True)
  for semantic, items in selection.items():
    mine = shard_items(items, num_shards, shard_index)
    done = read_class_progress(out, semantic, own=progress_path(out, semantic, shard_index))
    todo[semantic] = [it for it in mine if it.key not in done]
    stats[semantic] = collections.Counter(skipped=len(mine) - len(todo[semantic]))
  total = sum(len(v) for v in todo.values())
  if not quiet:
    print(f"caption: shard {shard_index}/{num_shards}: {total} images to caption, "
          f"{sum(s['skipped'] for s in stats.values())} done before", flush=True)
  bar = _progress_bar(total, quiet)
  try:
    for semantic, items in todo.items():
      path = progress_path(out, semantic, shard_index)
      bar.set_description(semantic)
      for start in range(0, len(items), settings.batch_size):
        batch = items[start:start + settings.batch_size]
        entries = (coco_entries(batch) if semantic == UNCAPTIONED
                   else caption_batch(ds, batch, settings))
        append_entries(path, entries)
        stats[semantic].update(e["status"] for e in entries)
        bar.update(len(batch))
  finally:
    bar.close()
  return stats


def _progress_bar(total: int, quiet: bool):
  from tqdm import tqdm

  return tqdm(total=total, unit="img", disable=quiet or total == 0, smoothing=0.1,
              dynamic_ncols=True, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Merge: progress files -> caption CSVs.
# ---------------------------------------------------------------------------------------------
def merge(out: str, selection: dict[str, list[Item]], num_shards: int = 1) -> dict[str, Any]:
  """Writes one caption CSV per class and the report; refuses while any image is missing."""
  progress, missing = {}, []
  for semantic, items in selection.items():
    progress[semantic] = read_class_progress(out, semantic)
    absent = [p for p, it in enumerate(items) if it.key not in progress[semantic]]
    if absent:
      where = (f"shard(s) {sorted({p % num_shards for p in absent})} of {num_shards}"
               if num_shards > 1 else f"selection positions {absent[:5]}")
      missing.append(f"{semantic}: {len(absent)} of {len(items)} images (first "
                     f"{items[absent[0]].key}; {where})")
  if missing:
    raise SystemExit("error: cannot merge, captions are missing for\n  " + "\n  ".join(missing)
                     + "\nrun the shards (the same command with --shard_index I; position P "
                     "belongs to shard P % N), then --merge with the same --num_shards")
  report_path = os.path.join(out, REPORT_JSON)
  report: dict[str, Any] = {}
  if os.path.exists(report_path):  # classes merged by earlier runs stay in the report
    with open(report_path) as f:
      report = json.load(f)
  for semantic, items in selection.items():
    entries = [progress[semantic][it.key] for it in items]
    kept = [e for e in entries if e["status"] == "ok"]
    rows = [captions.Caption(semantic, p, e["caption"], e["ImgPath"], e.get("label", ""))
            for p, e in enumerate(kept)]
    path = os.path.join(out, captions.file_name(semantic))
    captions.write_file(path, rows)
    report[semantic] = {
        "file": os.path.basename(path), "selected": len(items), "written": len(rows),
        "left_out": [{"key": e["key"], "status": e["status"],
                      "reason": e.get("reason", LEFT_OUT_REASONS.get(e["status"], ""))}
                     for e in entries if e["status"] != "ok"],
    }
  ingest.atomic_json(report_path, report, indent=1)
  return {semantic: report[semantic] for semantic in selection}


def format_merge(report: dict[str, Any]) -> str:
  lines = []
  for semantic, r in report.items():
    why = collections.Counter(e["status"] for e in r["left_out"])
    left = ", ".join(f"{n} {status}" for status, n in sorted(why.items()))
    lines.append(f"  {semantic}: {r['written']} of {r['selected']} captions -> {r['file']}"
                 + (f" (left out: {left})" if left else ""))
  return "\n".join(lines)


def format_run(stats: dict[str, collections.Counter], seconds: float) -> str:
  done = sum(n for c in stats.values() for k, n in c.items() if k != "skipped")
  lines = [f"finished {done} images in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} img/s)"]
  for semantic, c in stats.items():
    statuses = ", ".join(f"{n} {k}" for k, n in sorted(c.items()) if k != "skipped")
    lines.append(f"  {semantic}: {statuses or 'nothing to do'}; {c['skipped']} done before")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------
def _device(text: str) -> str:
  if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:INDEX; got {text!r}")
  return text


def _open_dataset(path: str) -> records.Dataset:
  try:
    return records.Dataset(path)
  except FileNotFoundError as e:
    raise SystemExit(f"error: --real {path}: {e}") from None


def _semantics(ds: records.Dataset, requested: str | None, real: str) -> list[str]:
  present = real_classes(ds)
  if requested is None:
    if not present:
      raise SystemExit(f"error: --real {real} holds no records of generator 'real'; make it with "
                       "`python -m data_prep.sample_real`")
    return present
  names = parse_classes(requested, "--semantics")
  absent = [s for s in names if s not in present]
  if absent:
    raise SystemExit(f"error: --semantics: --real {real} has no real images of {absent} (it has "
                     f"{present or 'none'})")
  return names


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.caption", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--real", required=True, help="dataset of sampled real images")
  parser.add_argument("--out", required=True, help="directory for the caption files")
  parser.add_argument("--model_id", default=DEFAULT_MODEL_ID, help="VLM hub id or local directory")
  parser.add_argument("--semantics", default=None,
                      help="comma-separated classes (default: every class with real images)")
  parser.add_argument("--per_class", type=int, default=captions.CAPTIONS_PER_CLASS)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--max_new_tokens", type=int, default=128)
  parser.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:I")
  parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
  parser.add_argument("--templates", default=None,
                      help="JSON file mapping class -> prompt template (replaces Table 2's)")
  parser.add_argument("--privacy", action="store_true",
                      help="clean the captions of --privacy_classes with a text LLM (appendix A)")
  parser.add_argument("--privacy_model_id", default=DEFAULT_PRIVACY_MODEL_ID)
  parser.add_argument("--privacy_prompt", default=None,
                      help="text file with the privacy instruction; {caption} marks the caption")
  parser.add_argument("--privacy_classes", default=",".join(DEFAULT_PRIVACY_CLASSES))
  parser.add_argument("--num_shards", type=int, default=1, help="machines sharing the work")
  parser.add_argument("--shard_index", type=int, default=0, help="this machine's shard")
  parser.add_argument("--merge", action="store_true",
                      help="only write the CSVs from the finished shards")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  if min(args.per_class, args.batch_size, args.max_new_tokens, args.num_shards) < 1:
    parser.error("--per_class, --batch_size, --max_new_tokens and --num_shards must be >= 1")
  if not 0 <= args.shard_index < args.num_shards:
    parser.error(f"--shard_index must be in [0, {args.num_shards}); got {args.shard_index}")
  privacy_classes = tuple(parse_classes(args.privacy_classes, "--privacy_classes"))
  if UNCAPTIONED in privacy_classes:
    parser.error("--privacy_classes: COCO keeps its own captions; the privacy pass cleans VLM "
                 "captions only")

  settings = Settings(
      model_id=args.model_id, templates=load_templates(args.templates),
      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, device=args.device,
      dtype=args.dtype, privacy_model_id=args.privacy_model_id if args.privacy else None,
      privacy_prompt=load_privacy_prompt(args.privacy_prompt), privacy_classes=privacy_classes)
  ds = _open_dataset(args.real)
  selection = select(ds, _semantics(ds, args.semantics, args.real), args.per_class, args.seed)
  for semantic, items in selection.items():
    if len(items) < args.per_class and not args.quiet:
      print(f"warning: {semantic} has only {len(items)} real images; all are captioned "
            f"(--per_class {args.per_class})", file=sys.stderr)
  stored = {"dataset_fingerprint": ds.info.get("fingerprint"), "seed": args.seed,
            "per_class": args.per_class, **settings.record()}
  # Merging needs only the same selection; the model settings matter to the shards that caption.
  selection_fields = ("dataset_fingerprint", "seed", "per_class")
  os.makedirs(args.out, exist_ok=True)
  check_settings(args.out, stored, selection_fields if args.merge else tuple(stored))

  start = time.time()
  if not args.merge:
    stats = run_shard(ds, selection, args.out, settings, args.num_shards, args.shard_index,
                      args.quiet)
    if not args.quiet:
      print(format_run(stats, time.time() - start))
  if args.merge or args.num_shards == 1:
    report = merge(args.out, selection, args.num_shards)
    if not args.quiet:
      print(f"wrote the caption files to {args.out}:\n{format_merge(report)}")
  elif not args.quiet:
    print(f"shard {args.shard_index} done; run with --merge once every shard has finished")
  return 0


if __name__ == "__main__":
  sys.exit(main())
