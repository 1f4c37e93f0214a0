"""Enumerates the images of a source download as ingest candidates, in a deterministic order.

Three layouts:
  tree     the official download, root/{model}/{AnimalFace/cat, ..., Scene/classroom}/, with the
           official selection rules (see `select_official`);
  parquet  the Hugging Face copy, [root/data/]{model}/{main_category}/{sub_category}.parquet with
           columns image (bytes), model, main_category, sub_category, filename;
  folders  root/{label}/**/*.{png,jpg,jpeg,webp}, any labels.

Enumeration reads directory listings and parquet metadata columns only; pixels are read later by
the ingest workers. Every worker of a multi-machine ingest enumerates the whole source and so
agrees on the class list and on which candidates form which chunk.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator

from iab_jax.data import generators

MAX_PER_FOLDER = 2000  # official cap per (model, semantic)
GENERATED_NAME = re.compile(r"^.*_p(\d+)_i(\d+)\.png$")
REAL_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# Midjourney returns four images per prompt; the official code keeps all four.
FOUR_IMAGE_MODELS = ("mid-5.2", "mid-6.0")
GROK3_CROP_MARGIN = (100, 50)  # right and bottom margins holding Grok3's watermark


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One image to ingest: where its bytes are and what it is."""

  key: str  # unique: "{generator}/{semantic}/{filename}" or the path relative to root
  generator: str
  semantic: str
  source: str
  filename: str
  path: str  # file to read; for parquet, the parquet file
  row: int = -1  # row within a parquet file
  caption_id: str = ""
  crop_margin: tuple[int, int] | None = None  # (right, bottom) cut off on decode
  # Set by callers that build their own candidate lists (data_prep.sample_real):
  lmdb_key: str = ""  # when set, path is an LMDB environment and this the key of the image
  caption: str = ""  # the record's caption text
  extra: dict = dataclasses.field(default_factory=dict, hash=False)  # into the record's extra


@dataclasses.dataclass
class Enumeration:
  candidates: list[Candidate]
  ignored: list[tuple[str, str]]  # (path, reason) of files the selection rules leave out

  @property
  def classes(self) -> list[str]:
    return generators.class_order({c.generator for c in self.candidates})


def select_official(filenames, model: str) -> tuple[list[str], list[tuple[str, str]]]:
  """The official selection rules on one folder's listing: (kept, [(name, why left out)])."""
  kept, ignored = [], []
  is_real = generators.canonical_name(model) == "real"
  max_k = 3 if generators.canonical_name(model) in FOUR_IMAGE_MODELS else 1
  for name in sorted(filenames):
    if len(kept) >= MAX_PER_FOLDER:
      ignored.append((name, f"over the {MAX_PER_FOLDER}-file cap"))
      continue
    if is_real:
      if name.lower().endswith(REAL_EXTENSIONS):
        kept.append(name)
      else:
        ignored.append((name, "real image without a png/jpg/jpeg extension"))
      continue
    match = GENERATED_NAME.match(name)
    if not match:
      ignored.append((name, "generated image not named *_p{P}_i{K}.png"))
    elif int(match.group(1)) >= 1000:
      ignored.append((name, "prompt index P >= 1000"))
    elif int(match.group(2)) > max_k:
      ignored.append((name, f"image index K > {max_k}"))
    else:
      kept.append(name)
  return kept, ignored


def _caption_id(semantic: str, filename: str) -> str:
  match = GENERATED_NAME.match(filename)
  return f"{semantic}/p{int(match.group(1))}" if match else ""


def _crop_margin(generator: str):
  return GROK3_CROP_MARGIN if generator == "grok3" else None


def enumerate_tree(root: str) -> Enumeration:
  candidates, ignored = [], []
  for model in sorted(os.listdir(root)):
    model_dir = os.path.join(root, model)
    if not os.path.isdir(model_dir):
      ignored.append((model_dir, "not a model folder"))
      continue
    generator = generators.canonical_name(model)
    for semantic, (rel, source) in generators.SEMANTICS.items():
      folder = os.path.join(model_dir, rel)
      if not os.path.isdir(folder):
        continue
      kept, left = select_official(os.listdir(folder), model)
      ignored += [(os.path.join(folder, n), why) for n, why in left]
      for name in kept:
        candidates.append(Candidate(
            key=f"{generator}/{semantic}/{name}", generator=generator, semantic=semantic,
            source=source, filename=name, path=os.path.join(folder, name),
            caption_id=_caption_id(semantic, name), crop_margin=_crop_margin(generator)))
  return Enumeration(candidates, ignored)


def _parquet_root(root: str) -> str:
  return os.path.join(root, "data") if os.path.isdir(os.path.join(root, "data")) else root


def enumerate_parquet(root: str) -> Enumeration:
  import pyarrow.parquet as pq

  base = _parquet_root(root)
  candidates, ignored = [], []
  groups: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
  for path in sorted(_walk(base, (".parquet",))):
    try:
      table = pq.read_table(path, columns=["model", "main_category", "sub_category", "filename"])
    except Exception as e:  # a broken parquet file is reported, the rest goes on
      ignored.append((path, f"unreadable parquet: {type(e).__name__}: {e}"))
      continue
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    for row, (model, main, sub, name) in enumerate(zip(
        cols["model"], cols["main_category"], cols["sub_category"], cols["filename"])):
      semantic = (generators.semantic_name(f"{main}/{sub}") or generators.semantic_name(sub or "")
                  or generators.semantic_name(main or ""))
      if semantic is None:
        ignored.append((f"{path}#{row}", f"unknown semantic class {main}/{sub}"))
        continue
      groups.setdefault((model, semantic), []).append((name, path, row))
  # The same rules as the folder tree, so both copies of the benchmark ingest to the same set.
  order = {name: i for i, name in enumerate(generators.SEMANTIC_ORDER)}
  for model, semantic in sorted(groups, key=lambda ms: (ms[0], order[ms[1]])):
    rows = groups[(model, semantic)]
    by_name = {}
    for name, path, row in rows:
      if name in by_name:
        ignored.append((f"{path}#{row}", f"duplicate filename {name} in {model}/{semantic}"))
      else:
        by_name[name] = (path, row)
    kept, left = select_official(by_name, model)
    ignored += [(f"{by_name[n][0]}#{by_name[n][1]}", why) for n, why in left]
    generator = generators.canonical_name(model)
    for name in kept:
      path, row = by_name[name]
      candidates.append(Candidate(
          key=f"{generator}/{semantic}/{name}", generator=generator, semantic=semantic,
          source=generators.SEMANTICS[semantic][1], filename=name, path=path, row=row,
          caption_id=_caption_id(semantic, name), crop_margin=_crop_margin(generator)))
  return Enumeration(candidates, ignored)


def enumerate_folders(root: str) -> Enumeration:
  candidates, ignored = [], []
  for label in sorted(os.listdir(root)):
    label_dir = os.path.join(root, label)
    if not os.path.isdir(label_dir):
      ignored.append((label_dir, "not a label folder"))
      continue
    generator = generators.canonical_name(label)
    for path in sorted(_walk(label_dir, None)):
      rel = os.path.relpath(path, label_dir)
      if not path.lower().endswith(FOLDER_EXTENSIONS):
        ignored.append((path, "extension not png/jpg/jpeg/webp"))
        continue
      semantic = _semantic_from_path(os.path.dirname(rel))
      candidates.append(Candidate(
          key=f"{generator}/{rel}", generator=generator, semantic=semantic,
          source=generators.SEMANTICS.get(semantic, ("", "unknown"))[1],
          filename=os.path.basename(path), path=path, crop_margin=_crop_margin(generator)))
  return Enumeration(candidates, ignored)


def _semantic_from_path(rel_dir: str) -> str:
  """The semantic class named by a folder path such as 'AnimalFace/cat' or 'cat' ('unknown')."""
  parts = [p for p in rel_dir.replace(os.sep, "/").split("/") if p]
  for n in range(len(parts), 0, -1):
    for start in range(len(parts) - n + 1):
      name = generators.semantic_name("/".join(parts[start:start + n]))
      if name:
        return name
  return "unknown"


def _walk(root: str, extensions) -> Iterator[str]:
  """Every entry below root that is not a directory (broken links included: ingest reports them)."""
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in filenames:
      if extensions is None or name.lower().endswith(extensions):
        yield os.path.join(dirpath, name)


LAYOUTS = {"tree": enumerate_tree, "parquet": enumerate_parquet, "folders": enumerate_folders}


def detect_layout(root: str) -> str:
  """Guesses the layout of a download: the official tree, parquet files, or plain folders."""
  for model in os.listdir(root):
    for rel, _ in generators.SEMANTICS.values():
      if "/" in rel and os.path.isdir(os.path.join(root, model, rel)):
        return "tree"
  if any(True for _ in _walk(root, (".parquet",))):
    return "parquet"
  return "folders"


def enumerate_source(root: str, layout: str) -> Enumeration:
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--src {root} is not a directory")
  if layout == "auto":
    layout = detect_layout(root)
  if layout not in LAYOUTS:
    raise ValueError(f"--layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
  return LAYOUTS[layout](root)
