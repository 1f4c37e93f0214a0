"""Caption files: the prompts of the generation stage, one CSV per semantic class.

The format is the one the benchmark's authors published (a copy ships in data_prep/captions/,
MIT licence): columns `ImgPath` (the real image the caption describes; its file name is the real
image's name), `Caption`, and for ImageNet-1k also `Label`. Files are named after the official
folders, e.g. `AnimalFace_cat.csv`, `Scene_LSUN_bedroom.csv`, `imagenet-1k.csv`.

A caption is identified by its semantic class and its row P in the file (0-based, header
excluded): `caption_id = "{semantic}/p{P}"`, the same id ingest derives from an official generated
file name `*_p{P}_i{K}.png`. Our own generation stage names its files that way, so captions, our
generated images and ingested official images share one id space. (How the authors' generation
scripts numbered P is not published; row order is the natural reading and the one we use.)

For COCO and ImageNet-1k the authors published a large candidate pool (`COCO.csv`, 5000 rows;
`imagenet-1k.csv`, 5 per label) and a 1000-row file (`COCO-new.csv`, `imagenet-1k-new.csv`, one
per label). The paper generates from 1000 captions per class, so the 1000-row files are the
default pool; `pool="full"` selects the large ones.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterable, Mapping, Sequence

from iab_jax.data import generators

PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captions")
CAPTIONS_PER_CLASS = 1000  # paper §3.2; also the official P < 1000 selection rule

# Semantic class -> file stem, as the authors named their caption files.
FILE_STEMS: dict[str, str] = {
    "cat": "AnimalFace_cat",
    "dog": "AnimalFace_dog",
    "wild": "AnimalFace_wild",
    "COCO": "COCO",
    "FFHQ": "HumanFace_FFHQ",
    "celebahq": "HumanFace_celebahq",
    "ImageNet-1k": "imagenet-1k",
    "bedroom": "Scene_LSUN_bedroom",
    "church": "Scene_LSUN_church",
    "classroom": "Scene_LSUN_classroom",
}
# Classes whose published pool is larger than 1000 rows; the "-new" file holds the 1000-row pool.
POOLED = ("COCO", "ImageNet-1k")
POOLS = ("final", "full")
COLUMNS = ("ImgPath", "Caption")
LABEL_COLUMN = "Label"


@dataclasses.dataclass(frozen=True)
class Caption:
  semantic: str
  index: int  # row P of its file
  text: str
  image_path: str = ""  # the real image the caption was written for
  label: str = ""  # ImageNet-1k class words

  @property
  def caption_id(self) -> str:
    return f"{self.semantic}/p{self.index}"

  @property
  def image_name(self) -> str:
    return os.path.basename(self.image_path)


def file_name(semantic: str, pool: str = "final") -> str:
  """The caption file name of a class ('AnimalFace_cat.csv'; 'COCO-new.csv' for the final pool)."""
  if semantic not in FILE_STEMS:
    raise ValueError(f"unknown semantic class {semantic!r}; expected one of {', '.join(FILE_STEMS)}")
  if pool not in POOLS:
    raise ValueError(f"caption pool must be one of {POOLS}; got {pool!r}")
  suffix = "-new" if semantic in POOLED and pool == "final" else ""
  return f"{FILE_STEMS[semantic]}{suffix}.csv"


def semantic_of_file(path: str) -> str | None:
  """The semantic class a caption file is named for, or None."""
  stem = os.path.splitext(os.path.basename(path))[0]
  if stem.endswith("-new"):
    stem = stem[:-len("-new")]
  for semantic, known in FILE_STEMS.items():
    if stem.lower() == known.lower():
      return semantic
  return generators.semantic_name(stem)


def load_file(path: str, semantic: str | None = None) -> list[Caption]:
  """Every caption of one file, in row order. Empty captions are an error naming their row."""
  semantic = semantic or semantic_of_file(path)
  if semantic is None:
    raise ValueError(f"cannot tell the semantic class of caption file {path}; name it like "
                     f"{file_name('cat')} or pass the class explicitly")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"caption file {path} lacks column(s) {missing}; it has "
                       f"{reader.fieldnames} (expected {list(COLUMNS)} [+ {LABEL_COLUMN}])")
    out = []
    for row_index, row in enumerate(reader):
      text = (row["Caption"] or "").strip()
      if not text:
        raise ValueError(f"caption file {path}: row {row_index} has an empty Caption")
      out.append(Caption(semantic, row_index, text, row["ImgPath"] or "",
                         (row.get(LABEL_COLUMN) or "").strip()))
  return out


def load(path: str, semantics: Sequence[str] | None = None, pool: str = "final",
         limit: int | None = CAPTIONS_PER_CLASS) -> dict[str, list[Caption]]:
  """Captions per semantic class from a directory of caption files or from one file.

  A directory is read by the authors' file names (`pool` picks between the 1000-row and the full
  files of COCO and ImageNet-1k); classes without a file are left out unless named in
  `semantics`, which makes them an error. `limit` keeps the first rows of each class.
  """
  if os.path.isfile(path):
    captions = load_file(path)
    found = {captions[0].semantic: captions} if captions else {}
  elif os.path.isdir(path):
    found = {}
    for semantic in FILE_STEMS if semantics is None else [s for s in semantics if s in FILE_STEMS]:
      candidates = [file_name(semantic, pool), file_name(semantic, "full")]
      for name in dict.fromkeys(candidates):  # the other pool only where this one is absent
        if os.path.exists(os.path.join(path, name)):
          found[semantic] = load_file(os.path.join(path, name), semantic)
          break
  else:
    raise FileNotFoundError(f"captions {path} is neither a file nor a directory")
  if semantics is not None:
    unknown = [s for s in semantics if s not in FILE_STEMS]
    if unknown:
      raise ValueError(f"unknown semantic class(es) {unknown}; expected some of "
                       f"{', '.join(FILE_STEMS)}")
    absent = [s for s in semantics if s not in found]
    if absent:
      raise FileNotFoundError(f"no caption file for {absent} in {path} (expected e.g. "
                              f"{file_name(absent[0], pool)})")
    found = {s: found[s] for s in semantics}
  order = {s: i for i, s in enumerate(generators.SEMANTIC_ORDER)}
  return {s: (caps[:limit] if limit else caps)
          for s, caps in sorted(found.items(), key=lambda kv: order.get(kv[0], len(order)))}


def write_file(path: str, captions: Iterable[Caption]) -> None:
  """Writes captions in the authors' columns (with Label when any caption has one), atomically."""
  captions = list(captions)
  with_label = any(c.label for c in captions)
  columns = ["ImgPath", LABEL_COLUMN, "Caption"] if with_label else list(COLUMNS)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for c in captions:
      row = {"ImgPath": c.image_path, "Caption": c.text}
      if with_label:
        row[LABEL_COLUMN] = c.label
      writer.writerow(row)
  os.replace(tmp, path)


def by_id(captions: Mapping[str, Sequence[Caption]]) -> dict[str, Caption]:
  return {c.caption_id: c for caps in captions.values() for c in caps}
