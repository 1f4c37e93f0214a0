"""Samples the benchmark's real photos from local copies of their source datasets (paper §3.1).

  python -m data_prep.sample_real --out DIR [--celebahq P] [--ffhq P] [--afhq P] [--lsun P]
      [--imagenet P] [--coco P] [--seed 0] [--count CLASS=N ...] [--balance CSV]
      [--num_workers N --worker_index I] [--merge] [--jobs J] [--dry_run]

The first step of rebuilding ImageAttributionBench: 2000 real photos per semantic class, 20,000 in
all, written as records of the `real` class with their original bytes. Sources not given are
skipped. `--count CLASS=N` changes a class's count, and N=0 leaves the class out. Class names:
cat, dog, wild, COCO, FFHQ, celebahq, ImageNet-1k, bedroom, church, classroom.

Source layouts. P is the folder given on the command line; the paths in OUT/sample_real.json, in
a record's `extra.source_path` and in a --balance CSV are relative to it.
  --celebahq  a folder of images, searched recursively (CelebAMask-HQ's CelebA-HQ-img/0.jpg ...
              29999.jpg, or a PNG export). In a CelebAMask-HQ root only CelebA-HQ-img/ is read,
              so the masks are never taken for photos.
  --ffhq      images1024x1024/ (00000/00000.png ...), searched recursively; P may be that folder.
  --afhq      afhq/{train,val}/{cat,dog,wild}/* (v1 and v2 alike); P may be afhq/ itself. Each
              class is sampled from the union of train and val.
  --lsun      LSUN's official LMDB exports {bedroom,church_outdoor,classroom}_{train,val}_lmdb/
              (read with `pip install lmdb`; an image is named {key}.{format of its bytes}), or
              folders {bedroom,church_outdoor,classroom}/ of exported images. church is LSUN's
              church_outdoor. A class with LMDB exports uses them and ignores its folder.
  --imagenet  ILSVRC2012 class folders {train,val}/{wnid}/*.JPEG, also under the Kaggle layout's
              ILSVRC/Data/CLS-LOC/. The count is spread evenly over the wnids: 2 per wnid by
              default. The class words come from LOC_synset_mapping.txt at P when it is there
              (`n01440764 tench, Tinca tinca`), else from the authors' caption file
              data_prep/captions/imagenet-1k-new.csv.
  --coco      {train2017,val2017}/*.jpg with annotations/captions_{train2017,val2017}.json. Only
              images with a caption are eligible. Each keeps the caption with the lowest
              annotation id, because COCO keeps its own captions (paper §3.2).

The selection is deterministic. A class's eligible files are sorted by path and ranked by random
keys from a numpy Generator seeded with (seed, crc32(class name)); for ImageNet-1k and balanced
classes, (seed, crc32("class/group")) per wnid or group. So the choice depends only on the seed,
the class and that sorted list: not on listing order, worker count or machine. Raising a count
keeps the images already chosen. The choice goes to OUT/sample_real.json before any record is
written. A rerun recomputes it and refuses to go on if it differs, i.e. if the sources or the
settings changed.

--balance CSV, columns `path,group`: demographic balancing, as the paper's appendix A did for the
face classes with FairFace predictions (a group is any string, e.g. `Female/East Asian`). A class
with any of its files in the CSV takes equal numbers from each group, as equal as the count and
the group sizes allow, with the remainder going to the largest groups. Its files absent from the
CSV are not eligible.

Records: generator `real`, key `real/{official folder}/{file name}`, e.g.
`real/AnimalFace/cat/flickr_cat_000300.jpg`. A file name found twice in a class becomes its source
path with `/` replaced by `_`. Each record holds the semantic class, the source dataset, the COCO
caption, and in `extra` the source_path (plus wnid and label for ImageNet-1k, image_id for COCO,
group when balanced). Writing goes through data_prep.ingest: chunked and resumable after a kill,
shared by N workers (`--num_workers N --worker_index I` on each, then `--merge` once). A corrupt
source file is reported and skipped. The report (OUT/ingest_report.txt) gives each class's target
and written counts.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from data_prep import _cli, captions, ingest, sources
from data_prep.split import class_rng
from iab_jax.data import generators

SELECTION_JSON = "sample_real.json"
LAYOUT = "sample_real"  # the layout name ingest records for our candidate list
DEFAULT_COUNT = 2000  # per class, paper §3.1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
LSUN_NAMES = {"bedroom": "bedroom", "church": "church_outdoor", "classroom": "classroom"}
LMDB_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # keys usable as file names
WNID = re.compile(r"n\d{8}")
IMAGENET_BASES = ("", "ILSVRC/Data/CLS-LOC")  # ILSVRC2012 folders, Kaggle's layout
COCO_SPLITS = ("train2017", "val2017")


@dataclasses.dataclass(frozen=True, slots=True)  # slots: LSUN bedroom lists 3M of these
class Eligible:
  """One file a class may sample."""

  rel: str  # path relative to the source root; LMDB: "{database folder}/{key}"
  path: str  # file to read; LMDB: the database folder
  name: str  # file name in the record key (LMDB: the key; the extension comes from the bytes)
  lmdb_key: str = ""
  group: str = ""  # the count is spread evenly over groups: ImageNet wnids, --balance groups
  caption: str = ""
  extra: dict = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass
class Listing:
  """A class's eligible files and, per reason, how many files were left out."""

  files: list[Eligible] = dataclasses.field(default_factory=list)
  left_out: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Listing the sources.
# ---------------------------------------------------------------------------------------------
def _image_files(root: str, sub: str, listing: Listing, **fields) -> list[Eligible]:
  """Eligible image files below root/sub; other files are counted as left out."""
  found = []
  for dirpath, _, filenames in os.walk(os.path.join(root, sub)):
    for name in filenames:
      path = os.path.join(dirpath, name)
      if name.startswith("."):  # macOS ._* shadows and the like
        listing.left_out["hidden file"] += 1
      elif not name.lower().endswith(IMAGE_EXTENSIONS):
        listing.left_out["not an image file name (png/jpg/jpeg/webp)"] += 1
      else:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        found.append(Eligible(rel, path, name, **fields))
  return found


def _sub_if_present(root: str, sub: str) -> str:
  return sub if os.path.isdir(os.path.join(root, sub)) else ""


def list_celebahq(root: str, classes: Sequence[str]) -> dict[str, Listing]:
  listing = Listing()
  listing.files = _image_files(root, _sub_if_present(root, "CelebA-HQ-img"), listing)
  return {"celebahq": listing}


def list_ffhq(root: str, classes: Sequence[str]) -> dict[str, Listing]:
  listing = Listing()  # images1024x1024/ only: an FFHQ root also holds thumbnails128x128/
  listing.files = _image_files(root, _sub_if_present(root, "images1024x1024"), listing)
  return {"FFHQ": listing}


def list_afhq(root: str, classes: Sequence[str]) -> dict[str, Listing]:
  base = _sub_if_present(root, "afhq")
  splits = [s for s in ("train", "val") if os.path.isdir(os.path.join(root, base, s))]
  if not splits:
    raise SystemExit(f"error: --afhq {root} has no train/ or val/ folder; expected "
                     f"{SOURCE_LAYOUTS['afhq']}")
  found = {}
  for semantic in classes:
    listing = found[semantic] = Listing()
    for split in splits:
      sub = os.path.join(base, split, semantic)
      if os.path.isdir(os.path.join(root, sub)):
        listing.files += _image_files(root, sub, listing)
  return found


def list_lsun(root: str, classes: Sequence[str]) -> dict[str, Listing]:
  found = {}
  for semantic in classes:
    name = LSUN_NAMES[semantic]
    listing = found[semantic] = Listing()
    databases = [f"{name}_{split}_lmdb" for split in ("train", "val")
                 if os.path.isdir(os.path.join(root, f"{name}_{split}_lmdb"))]
    for database in databases:
      listing.files += _lmdb_files(root, database, listing)
    if not databases and os.path.isdir(os.path.join(root, name)):
      listing.files = _image_files(root, name, listing)
  return found


def _import_lmdb():
  try:
    import lmdb
  except ImportError:
    raise SystemExit(
        "error: reading LSUN's LMDB exports needs the lmdb package: pip install lmdb (or pip "
        "install -e '.[generate]'); or export the images to folders "
        "{bedroom,church_outdoor,classroom}/ and pass their parent as --lsun") from None
  return lmdb


def _open_lmdb(path: str):
  # lock=False: the exports are only read, and may sit on a read-only file system.
  return _import_lmdb().open(path, readonly=True, lock=False, readahead=False)


def _lmdb_files(root: str, database: str, listing: Listing) -> list[Eligible]:
  """One eligible image per key of an LMDB export; an unreadable database is reported, skipped."""
  path = os.path.join(root, database)
  lmdb = _import_lmdb()
  try:
    with _open_lmdb(path) as env, env.begin() as txn:
      keys = list(txn.cursor().iternext(keys=True, values=False))
  except lmdb.Error as e:
    _warn(f"skipping unreadable LMDB {path} ({type(e).__name__}: {e})")
    listing.left_out[f"unreadable LMDB {database}"] += 1
    return []
  found = []
  for raw in keys:
    key = raw.decode("ascii", "replace")
    if LMDB_KEY.fullmatch(key):
      found.append(Eligible(f"{database}/{key}", path, key, lmdb_key=key))
    else:
      listing.left_out["LMDB key not usable as a file name"] += 1
  return found


def _extension(head: bytes) -> str:
  """File extension for an image's first bytes ('' when unknown: ingest reports the file)."""
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    return ".webp"
  if head.startswith(b"\xff\xd8\xff"):
    return ".jpg"
  if head.startswith(b"\x89PNG"):
    return ".png"
  return ""


def lmdb_extensions(chosen: Sequence[Eligible]) -> dict[str, str]:
  """The extension of each chosen LMDB image, from its bytes (LSUN's exports are WebP)."""
  extensions, by_database = {}, collections.defaultdict(list)
  for f in chosen:
    if f.lmdb_key:
      by_database[f.path].append(f)
  lmdb = _import_lmdb() if by_database else None
  for path, files in by_database.items():
    try:
      with _open_lmdb(path) as env, env.begin(buffers=True) as txn:
        for f in files:
          value = txn.get(f.lmdb_key.encode())
          extensions[f.rel] = _extension(bytes(value[:12]) if value is not None else b"")
    except lmdb.Error as e:  # ingest then reports each of its images as unreadable
      _warn(f"cannot read {path} to name its images ({type(e).__name__}: {e})")
  return extensions


def list_imagenet(root: str, classes: Sequence[str]) -> dict[str, Listing]:
  listing = Listing()
  split_dirs = [os.path.join(base, split) for base in IMAGENET_BASES for split in ("train", "val")
                if os.path.isdir(os.path.join(root, base, split))]
  if not split_dirs:
    raise SystemExit(f"error: --imagenet {root} has no train/ or val/ folder; expected "
                     f"{SOURCE_LAYOUTS['imagenet']}")
  for split_dir in split_dirs:
    for entry in sorted(os.listdir(os.path.join(root, split_dir))):
      sub = os.path.join(split_dir, entry)
      if WNID.fullmatch(entry) and os.path.isdir(os.path.join(root, sub)):
        listing.files += _image_files(root, sub, listing, group=entry)
      else:  # e.g. Kaggle's flat val/ folder, whose labels live in a separate CSV
        listing.left_out["not in a {split}/{wnid}/ folder"] += 1
  labels = imagenet_labels(root)
  unlabelled = sorted({f.group for f in listing.files} - set(labels))
  if unlabelled:
    _warn(f"no class words for {len(unlabelled)} wnid(s) (first: {unlabelled[:5]}); their "
          "records get an empty label")
  listing.files = [dataclasses.replace(f, extra={"wnid": f.group, "label": labels.get(f.group, "")})
                   for f in listing.files]
  return {"ImageNet-1k": listing}


def imagenet_labels(root: str) -> dict[str, str]:
  """wnid -> class words, from LOC_synset_mapping.txt at root, else the authors' caption file."""
  mapping = os.path.join(root, "LOC_synset_mapping.txt")
  labels = {}
  if os.path.exists(mapping):
    with open(mapping, encoding="utf-8") as f:
      for line in f:
        wnid, _, words = line.strip().partition(" ")
        if WNID.fullmatch(wnid) and words.strip():
          labels[wnid] = words.strip()
    return labels
  path = os.path.join(captions.PACKAGED_DIR, captions.file_name("ImageNet-1k"))
  for caption in captions.load_file(path, "ImageNet-1k"):
    # ImgPath is the authors' path of the captioned photo: .../{wnid}/{file}.
    wnid = caption.image_path.replace("\\", "/").split("/")[-2]
    labels.setdefault(wnid, caption.label)
  return labels


def list_coco(root: str, classes: Sequence[str]) -> dict[str, Listing]:
  listing = Listing()
  splits = [s for s in COCO_SPLITS if os.path.isdir(os.path.join(root, s))]
  if not splits:
    raise SystemExit(f"error: --coco {root} has neither train2017/ nor val2017/; expected "
                     f"{SOURCE_LAYOUTS['coco']}")
  for split in splits:
    names = sorted(os.listdir(os.path.join(root, split)))
    by_file = coco_captions(os.path.join(root, "annotations", f"captions_{split}.json"))
    if by_file is None:
      listing.left_out[f"no readable annotations/captions_{split}.json"] += len(names)
      continue
    for name in names:
      if not name.lower().endswith(IMAGE_EXTENSIONS) or name.startswith("."):
        listing.left_out["not an image file name (png/jpg/jpeg/webp)"] += 1
      elif name not in by_file:
        listing.left_out["no caption in the annotations"] += 1
      else:
        image_id, text = by_file[name]
        listing.files.append(Eligible(f"{split}/{name}", os.path.join(root, split, name), name,
                                      caption=text, extra={"image_id": image_id}))
  return {"COCO": listing}


def coco_captions(path: str) -> dict[str, tuple[int, str]] | None:
  """file name -> (image id, caption of its lowest annotation id); None, reported, if unreadable."""
  if not os.path.exists(path):
    _warn(f"{path} is missing; the images it would caption are not eligible")
    return None
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    files = {image["id"]: image["file_name"] for image in data["images"]}
    best = {}
    for annotation in data["annotations"]:
      image_id, text = annotation["image_id"], str(annotation["caption"]).strip()
      if image_id in files and text and (image_id not in best
                                         or annotation["id"] < best[image_id][0]):
        best[image_id] = (annotation["id"], text)
  except (OSError, ValueError, KeyError, TypeError) as e:
    _warn(f"skipping unreadable COCO annotations {path} ({type(e).__name__}: {e}); the images "
          "it would caption are not eligible")
    return None
  return {files[image_id]: (image_id, text) for image_id, (_, text) in best.items()}


@dataclasses.dataclass(frozen=True)
class Source:
  flag: str
  classes: tuple[str, ...]
  lister: Callable[[str, Sequence[str]], dict[str, Listing]]


# In SEMANTIC_ORDER, so records come out class by class in the benchmark's order.
SOURCES = (
    Source("afhq", ("cat", "dog", "wild"), list_afhq),
    Source("coco", ("COCO",), list_coco),
    Source("ffhq", ("FFHQ",), list_ffhq),
    Source("celebahq", ("celebahq",), list_celebahq),
    Source("imagenet", ("ImageNet-1k",), list_imagenet),
    Source("lsun", ("bedroom", "church", "classroom"), list_lsun),
)
SOURCE_LAYOUTS = {
    "afhq": "afhq/{train,val}/{cat,dog,wild}/*",
    "coco": "{train2017,val2017}/*.jpg and annotations/captions_{train2017,val2017}.json",
    "ffhq": "images1024x1024/**/*.png",
    "celebahq": "a folder of images (e.g. CelebA-HQ-img/*.jpg), searched recursively",
    "imagenet": "{train,val}/{wnid}/*.JPEG (+ LOC_synset_mapping.txt)",
    "lsun": "{bedroom,church_outdoor,classroom}_{train,val}_lmdb/ or "
            "{bedroom,church_outdoor,classroom}/ image folders",
}


# ---------------------------------------------------------------------------------------------
# Selection.
# ---------------------------------------------------------------------------------------------
def allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
  """Splits `total` over groups as equally as their sizes allow.

  Groups are filled smallest first, each taking an equal share of what is left (never more than
  it holds), so a small group's shortfall is spread over the larger ones and the rounding
  remainder lands on the largest groups (among equal sizes, the later names).
  """
  order = sorted(sizes, key=lambda g: (sizes[g], g))
  left = min(total, sum(sizes.values()))
  shares = {}
  for i, group in enumerate(order):
    shares[group] = min(sizes[group], left // (len(order) - i))
    left -= shares[group]
  return shares


def select(files: Sequence[Eligible], count: int, seed: int,
           semantic: str) -> tuple[list[Eligible], dict[str, int]]:
  """(chosen files sorted by path, count per group) for one class.

  Within a group the files are sorted by path and ranked by uniform keys, and the lowest-ranked
  are taken: the first k of a ranking do not depend on k, so a larger count keeps the smaller
  count's choice.
  """
  groups = collections.defaultdict(list)
  for f in sorted(files, key=lambda f: f.rel):
    groups[f.group].append(f)
  shares = allocate({g: len(members) for g, members in groups.items()}, count)
  chosen = []
  for group, members in sorted(groups.items()):
    rng = class_rng(seed, f"{semantic}/{group}" if group else semantic)
    ranking = np.argsort(rng.random(len(members)), kind="stable")
    chosen += [members[i] for i in ranking[:shares[group]]]
  return sorted(chosen, key=lambda f: f.rel), shares


def read_balance(path: str) -> dict[str, str]:
  """source path -> group from a --balance CSV; a bad row is reported and skipped."""
  if not os.path.isfile(path):
    raise SystemExit(f"error: --balance {path} is not a file; expected a CSV with columns "
                     "path,group")
  groups = {}
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      missing = {"path", "group"} - set(reader.fieldnames or [])
      if missing:
        raise SystemExit(f"error: --balance {path} lacks column(s) {sorted(missing)}; it has "
                         f"{reader.fieldnames} (expected path,group)")
      for line, row in enumerate(reader, start=2):
        rel = (row["path"] or "").strip().replace("\\", "/").removeprefix("./")
        group = (row["group"] or "").strip()
        if not rel or not group:
          _warn(f"{path}:{line}: empty path or group; row skipped")
        elif groups.get(rel, group) != group:
          _warn(f"{path}:{line}: {rel} already has group {groups[rel]!r}; row skipped")
        else:
          groups[rel] = group
  except (UnicodeDecodeError, csv.Error) as e:
    raise SystemExit(f"error: --balance {path} is not a readable UTF-8 CSV ({e})") from None
  return groups


def balance_listing(listing: Listing, groups: Mapping[str, str]) -> bool:
  """Restricts a class to its files in the --balance CSV, grouped; False if none are there."""
  kept = [dataclasses.replace(f, group=groups[f.rel], extra={**f.extra, "group": groups[f.rel]})
          for f in listing.files if f.rel in groups]
  if not kept:
    return False
  listing.left_out["not in the --balance CSV"] += len(listing.files) - len(kept)
  listing.files = kept
  return True


def unique_names(files: Sequence[Eligible]) -> dict[str, str]:
  """source path -> file name, the source path with / as _ where a name occurs twice in a class."""
  counts = collections.Counter(f.name for f in files)
  return {f.rel: f.name if counts[f.name] == 1 else f.rel.replace("/", "_") for f in files}


def build_selection(roots: Mapping[str, str], counts: Mapping[str, int], seed: int,
                    balance: Mapping[str, str] | None = None,
                    quiet: bool = False) -> tuple[dict, list[sources.Candidate]]:
  """Lists the given sources and samples each class: (selection plan, ingest candidates)."""
  plan = {"seed": seed, "counts": {}, "classes": {},
          "roots": {flag: os.path.abspath(root) for flag, root in roots.items()}}
  candidates = []
  for source in SOURCES:
    wanted = [c for c in source.classes if counts[c] > 0]
    if source.flag not in roots or not wanted:
      if not quiet:
        why = f"no --{source.flag}" if source.flag not in roots else "count 0"
        print(f"skipping {', '.join(source.classes)} ({why})")
      continue
    root = roots[source.flag]
    if not os.path.isdir(root):
      raise SystemExit(f"error: --{source.flag} {root} is not a directory; expected "
                       f"{SOURCE_LAYOUTS[source.flag]}")
    listings = source.lister(root, wanted)
    for semantic in wanted:
      listing = listings[semantic]
      balanced = balance_listing(listing, balance) if balance else False
      if not listing.files:
        raise SystemExit(f"error: found no {semantic} images under --{source.flag} {root}; "
                         f"expected {SOURCE_LAYOUTS[source.flag]}")
      chosen, shares = select(listing.files, counts[semantic], seed, semantic)
      if len(chosen) < counts[semantic]:
        _warn(f"{semantic}: only {len(listing.files)} eligible images, fewer than the "
              f"{counts[semantic]} asked for")
      plan["counts"][semantic] = counts[semantic]
      plan["classes"][semantic] = class_plan(source.flag, listing, chosen, shares, balanced)
      candidates += class_candidates(semantic, listing.files, chosen)
  return plan, candidates


def class_plan(flag: str, listing: Listing, chosen: Sequence[Eligible], shares: Mapping[str, int],
               balanced: bool) -> dict:
  rels = sorted(f.rel for f in listing.files)
  entry = {
      "source": f"--{flag}",
      "eligible": len(rels),
      "eligible_sha256": hashlib.sha256("\n".join(rels).encode()).hexdigest(),
      "left_out": dict(sorted(listing.left_out.items())),
      "balanced": balanced,
      "chosen": [f.rel for f in chosen],
  }
  if set(shares) != {""}:  # grouped: ImageNet wnids or --balance groups
    entry["per_group"] = dict(sorted(shares.items()))
  return entry


def class_candidates(semantic: str, eligible: Sequence[Eligible],
                     chosen: Sequence[Eligible]) -> list[sources.Candidate]:
  folder, dataset = generators.SEMANTICS[semantic]
  names = unique_names(eligible)  # from all eligible files, so a name never depends on the count
  extensions = lmdb_extensions(chosen)
  out = []
  for f in chosen:
    filename = names[f.rel] + extensions.get(f.rel, "")
    out.append(sources.Candidate(
        key=f"real/{folder}/{filename}", generator="real", semantic=semantic, source=dataset,
        filename=filename, path=f.path, lmdb_key=f.lmdb_key, caption=f.caption,
        extra={"source_path": f.rel, **f.extra}))
  return out


# ---------------------------------------------------------------------------------------------
# The selection file and the run.
# ---------------------------------------------------------------------------------------------
def selection_path(out: str) -> str:
  return os.path.join(out, SELECTION_JSON)


def store_or_check_selection(out: str, plan: dict) -> None:
  """Writes the plan on the first run; later runs must compute the same one."""
  path = selection_path(out)
  if not os.path.exists(path):
    ingest.atomic_json(path, plan)
    return
  stored = load_selection(out)
  difference = _difference(stored, plan)
  if difference:
    raise SystemExit(f"error: {path} holds a different selection ({difference}). The sources or "
                     f"settings changed since the sampling started; use a new --out or delete "
                     f"{out} to start again.")


def _difference(stored: dict, plan: dict) -> str:
  """What differs between two plans ('' if nothing); the roots may move, the choice may not."""
  for field in ("seed", "counts"):
    if stored.get(field) != plan[field]:
      return f"{field}: stored {stored.get(field)}, now {plan[field]}"
  for semantic, entry in plan["classes"].items():
    old = stored.get("classes", {}).get(semantic, {})
    for field, value in entry.items():
      if old.get(field) != value:
        return f"class {semantic}, {field}: stored {_shown(old.get(field))}, now {_shown(value)}"
  return ""


def _shown(value) -> str:
  return f"{len(value)} files" if isinstance(value, list) else str(value)[:80]


def load_selection(out: str) -> dict:
  path = selection_path(out)
  if not os.path.exists(path):
    raise SystemExit(f"error: {out} has no {SELECTION_JSON}; run the sampling workers first")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: {path} is unreadable ({type(e).__name__}: {e}); delete {out} "
                     "to start again") from None


def format_selection(plan: dict) -> str:
  lines = [f"sample_real, seed {plan['seed']}:"]
  for semantic, entry in plan["classes"].items():
    left = ", ".join(f"{n} {why}" for why, n in entry["left_out"].items())
    lines.append(f"  {semantic}: {len(entry['chosen'])} chosen of {plan['counts'][semantic]} "
                 f"wanted, from {entry['eligible']} eligible ({entry['source']}"
                 f"{', balanced' if entry['balanced'] else ''})"
                 + (f"; left out: {left}" if left else ""))
  return "\n".join(lines)


def merge(out: str, quiet: bool = False) -> dict:
  """ingest.merge with the per-class targets of the selection in the report."""
  return ingest.merge(out, quiet, targets=load_selection(out)["counts"])


def parse_counts(items: Sequence[str]) -> dict[str, int]:
  """Counts per class: the default, changed by CLASS=N items. Raises ValueError on a bad item."""
  counts = {semantic: DEFAULT_COUNT for semantic in generators.SEMANTICS}
  for item in items:
    name, _, value = item.partition("=")
    semantic = name if name in counts else generators.semantic_name(name)
    if semantic is None or not value.isdigit():
      raise ValueError(f"--count {item}: expected CLASS=N with N >= 0 and CLASS one of "
                       f"{', '.join(counts)}")
    counts[semantic] = int(value)
  return counts


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.sample_real", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="dataset directory to write")
  for source in SOURCES:
    parser.add_argument(f"--{source.flag}", metavar="P",
                        help=f"{'/'.join(source.classes)}: {SOURCE_LAYOUTS[source.flag]}")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--count", nargs="+", action="extend", default=[], metavar="CLASS=N",
                      help=f"images per class (default {DEFAULT_COUNT}; 0 leaves a class out)")
  parser.add_argument("--balance", metavar="CSV", help="path,group CSV for demographic balancing")
  parser.add_argument("--num_workers", type=int, default=1, help="machines sharing the writing")
  parser.add_argument("--worker_index", type=int, default=0, help="this machine's index")
  parser.add_argument("--merge", action="store_true",
                      help="only merge the finished chunks of all workers")
  parser.add_argument("--jobs", type=int, default=0, help="decode processes (0: one per core)")
  parser.add_argument("--chunk_size", type=int, default=256, help="images per shard")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the selection; write nothing")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  if args.chunk_size < 1 or args.num_workers < 1 or args.seed < 0:
    parser.error("--chunk_size and --num_workers must be >= 1, --seed >= 0")
  if not 0 <= args.worker_index < args.num_workers:
    parser.error(f"--worker_index must be in [0, {args.num_workers}); got {args.worker_index}")
  start = time.time()
  if not args.merge:
    roots = {s.flag: getattr(args, s.flag) for s in SOURCES if getattr(args, s.flag)}
    if not roots:
      parser.error("give at least one source: " + ", ".join(f"--{s.flag}" for s in SOURCES))
    try:
      counts = parse_counts(args.count)
    except ValueError as e:
      parser.error(str(e))
    balance = read_balance(args.balance) if args.balance else None
    plan, candidates = build_selection(roots, counts, args.seed, balance, args.quiet)
    if not candidates:
      raise SystemExit("error: nothing to sample: every class of the given sources has count 0")
    if args.dry_run or not args.quiet:
      print(format_selection(plan), flush=True)
    if args.dry_run:
      return 0
    store_or_check_selection(args.out, plan)
    ingest.run_worker(selection_path(args.out), args.out, LAYOUT, args.num_workers,
                      args.worker_index, args.chunk_size, args.jobs, quiet=args.quiet,
                      enumeration=sources.Enumeration(candidates, []))
  ingest.finish(args, start, merge)
  return 0


if __name__ == "__main__":
  sys.exit(_cli.run(main))
