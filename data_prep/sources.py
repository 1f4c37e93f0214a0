"""Enumerates the images of a source download as ingest candidates, in a deterministic order.

Three layouts:
  tree     the official download, root/{model}/{AnimalFace/cat, ..., Scene/classroom}/, with the
           official selection rules (see `select_official`);
  parquet  the Hugging Face copy, [root/data/]{model}/{main_category}/{sub_category}.parquet with
           columns image (bytes), model, main_category, sub_category, filename;
  folders  root/{label}/**/*.{png,jpg,jpeg,webp}, any labels. Directory symlinks are followed
           once: a link back to a directory above it (a loop), a second way into a directory
           already walked and an unreadable directory are left out and reported, as is a file
           symlink that loops. `group_from` gives each record a group for group-disjoint
           splits (see `GroupRule`).

Enumeration reads directory listings and parquet metadata columns only; pixels are read later by
the ingest workers. Every worker of a multi-machine ingest enumerates the whole source and so
agrees on the class list and on which candidates form which chunk.

Each candidate's `extra` keeps where it came from, `model_folder` (the model folder, parquet
`model` value or label folder, as named in the source, before `generators.canonical_name`) and
`semantic_folder` (its folder below that), so that `data_prep.split --official` can leave out
what the official loader would never open (an alias folder such as sd-v2.1, a generator it does
not know).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from typing import Iterator

from iab_jax.data import generators

MAX_PER_FOLDER = 2000  # official cap per (model, semantic)
# The official loader keeps a generated file when its lower-cased name ends in .png and the FIRST
# match of this pattern anywhere in the name (re.search) has P < 1000 and K in 0..1 (0..3 for
# Midjourney): x_p3_i0.PNG, x_p3_i0_v2.png, x_p3_i0 copy.png and x_p3_i0_p4_i9.png all count.
OFFICIAL_NAME_PATTERN = re.compile(r"_p(\d+)_i(\d+)")
OFFICIAL_MAX_PROMPT = 1000
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
  group: str = ""  # the record's group (folders layout with group_from), "" for none
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


def official_rule(name: str, generator: str) -> str | None:
  """Why the official loader leaves out a file of this name (None: it keeps it, cap aside).

  `generator` is the canonical name of the model folder: "real" takes any png/jpg/jpeg, the
  others need a .png name whose first `_p{P}_i{K}` has P < 1000 and K < 2 (K < 4 for mid-5.2
  and mid-6.0). Extensions are compared lower-cased, as the official code does.
  """
  lower = name.lower()
  if generator == "real":
    if lower.endswith(REAL_EXTENSIONS):
      return None
    return "real image without a png/jpg/jpeg extension"
  if not lower.endswith(".png"):
    return "generated image without a .png extension"
  match = OFFICIAL_NAME_PATTERN.search(name)
  if not match:
    return "generated image whose name holds no _p{P}_i{K}"
  max_k = 3 if generator in FOUR_IMAGE_MODELS else 1
  if int(match.group(1)) >= OFFICIAL_MAX_PROMPT:
    return f"prompt index P >= {OFFICIAL_MAX_PROMPT}"
  if int(match.group(2)) > max_k:
    return f"image index K > {max_k}"
  return None


def select_official(filenames, model: str) -> tuple[list[str], list[tuple[str, str]]]:
  """The official selection rules on one folder's listing: (kept, [(name, why left out)]).

  The first MAX_PER_FOLDER names the rules keep, in sorted order, as the official loader takes
  them (it skips a name the rules refuse without counting it, and stops at the cap).
  """
  kept, ignored = [], []
  generator = generators.canonical_name(model)
  for name in sorted(filenames):
    why = official_rule(name, generator)
    if why is None and len(kept) >= MAX_PER_FOLDER:
      why = f"over the {MAX_PER_FOLDER}-file cap"
    if why is None:
      kept.append(name)
    else:
      ignored.append((name, why))
  return kept, ignored


def _caption_id(semantic: str, filename: str) -> str:
  """"{semantic}/p{P}" from the first _p{P}_i{K} of the name, as the official loader reads it."""
  match = OFFICIAL_NAME_PATTERN.search(filename)
  return f"{semantic}/p{int(match.group(1))}" if match else ""


@dataclasses.dataclass(frozen=True)
class GroupRule:
  """How the folders layout names a record's group, from its path below its label folder.

  "dirname": the directory path below the label folder (`real/prompt_07/a.png` -> `prompt_07`,
    `real/a/b/c.png` -> `a/b`); a file directly in its label folder takes its file stem
    (`real/prompt_07.png` -> `prompt_07`), so flat folders whose files are named by prompt
    group the same prompt across labels.
  "regex:PATTERN": `re.search(PATTERN, path)` on the path below the label folder, written with
    "/": the first capture group, or the whole match when the pattern has none. A file the
    pattern does not match (or matches with an empty group) is left out of the ingest and listed
    with that reason: a group-disjoint split cannot place a record without a group, and a user
    who asked for groups wants to see the files the pattern misses rather than have them ingested
    unsplittable.
  """

  spec: str

  @classmethod
  def parse(cls, spec: str) -> "GroupRule":
    if spec == "dirname":
      return cls(spec)
    if spec.startswith("regex:"):
      pattern = spec[len("regex:"):]
      if not pattern:
        raise ValueError("--group_from regex: needs a pattern, e.g. regex:prompt_(\\d+)")
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"--group_from {spec}: not a valid regular expression ({e})") from None
      return cls(spec)
    raise ValueError(f"--group_from must be dirname or regex:PATTERN; got {spec!r}")

  @property
  def reason(self) -> str:
    """The reason listed for a file this rule gives no group."""
    return f"no group: --group_from {self.spec} does not match its path below the label folder"

  def group(self, rel: str) -> str | None:
    """The group of a file at `rel` below its label folder; None when the rule gives none."""
    rel = rel.replace(os.sep, "/")
    if self.spec == "dirname":
      folder, name = rel.rpartition("/")[0], rel.rpartition("/")[2]
      return folder or os.path.splitext(name)[0]
    match = re.search(self.spec[len("regex:"):], rel)
    if not match:
      return None
    value = match.group(1) if match.re.groups else match.group(0)
    return value or None


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
            caption_id=_caption_id(semantic, name), crop_margin=_crop_margin(generator),
            extra=_origin(model, rel)))
  return Enumeration(candidates, ignored)


def _origin(model_folder: str, semantic_folder: str) -> dict[str, str]:
  """Where a record came from, as the source names it (see the module docstring)."""
  return {"model_folder": model_folder, "semantic_folder": semantic_folder}


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
          caption_id=_caption_id(semantic, name), crop_margin=_crop_margin(generator),
          extra=_origin(model, generators.SEMANTICS[semantic][0])))
  return Enumeration(candidates, ignored)


def enumerate_folders(root: str, group_from: str = "") -> Enumeration:
  candidates, ignored = [], []
  rule = GroupRule.parse(group_from) if group_from else None
  for label in sorted(os.listdir(root)):
    label_dir = os.path.join(root, label)
    if not os.path.isdir(label_dir):
      ignored.append((label_dir, _not_a_folder(label_dir, "not a label folder")))
      continue
    generator = generators.canonical_name(label)
    for path in sorted(_walk(label_dir, None, ignored)):
      rel = os.path.relpath(path, label_dir).replace(os.sep, "/")
      if not path.lower().endswith(FOLDER_EXTENSIONS):
        ignored.append((path, "extension not png/jpg/jpeg/webp"))
        continue
      group = ""
      if rule is not None:
        group = rule.group(rel)
        if group is None:
          ignored.append((path, rule.reason))
          continue
      rel_dir = rel.rpartition("/")[0]
      semantic = _semantic_from_path(rel_dir)
      candidates.append(Candidate(
          key=f"{generator}/{rel}", generator=generator, semantic=semantic,
          source=generators.SEMANTICS.get(semantic, ("", "unknown"))[1],
          filename=os.path.basename(path), path=path, crop_margin=_crop_margin(generator),
          group=group, extra=_origin(label, rel_dir)))
  return Enumeration(candidates, ignored)


def _not_a_folder(path: str, reason: str) -> str:
  return "symbolic link loop" if _is_link_loop(path) else reason


def _is_link_loop(path: str) -> bool:
  """A symlink that cannot be resolved because it (eventually) points to itself."""
  if not os.path.islink(path):
    return False
  try:
    os.stat(path)
  except OSError as e:
    return e.errno == errno.ELOOP
  return False


def _semantic_from_path(rel_dir: str) -> str:
  """The semantic class named by a folder path such as 'AnimalFace/cat' or 'cat' ('unknown')."""
  parts = [p for p in rel_dir.replace(os.sep, "/").split("/") if p]
  for n in range(len(parts), 0, -1):
    for start in range(len(parts) - n + 1):
      name = generators.semantic_name("/".join(parts[start:start + n]))
      if name:
        return name
  return "unknown"


def _walk(root: str, extensions, ignored: list[tuple[str, str]] | None = None
          ) -> Iterator[str]:
  """Every entry below root that is not a directory (broken links included: ingest reports them).

  Directory symlinks are followed, each directory walked once: a directory reached again (a
  symlink loop back to a directory above it, or a second way into one walked already), an
  unreadable directory and a file symlink that loops are appended to `ignored` with the reason
  instead. Without that check a loop would be walked until the path grows too long.
  """
  def note(path: str, why: str) -> None:
    if ignored is not None:
      ignored.append((path, why))

  def unreadable(error: OSError) -> None:
    note(error.filename or root, f"unreadable directory ({error.strerror or error})")

  walked: dict[tuple[int, int], str] = {}
  try:
    st = os.stat(root)
    walked[(st.st_dev, st.st_ino)] = root
  except OSError:
    pass  # os.walk reports it through `unreadable`
  for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
    keep = []
    for name in sorted(dirnames):
      path = os.path.join(dirpath, name)
      try:
        st = os.stat(path)
      except OSError as e:
        note(path, f"unreadable directory ({e.strerror or e})")
        continue
      first = walked.get((st.st_dev, st.st_ino))
      if first is None:
        walked[(st.st_dev, st.st_ino)] = path
        keep.append(name)
      elif dirpath == first or dirpath.startswith(first.rstrip(os.sep) + os.sep):
        note(path, f"directory symlink loop (it leads back to {first}, a folder above it)")
      else:
        note(path, f"directory reached twice through a symlink (already walked as {first})")
    dirnames[:] = keep
    for name in filenames:
      if extensions is None or name.lower().endswith(extensions):
        path = os.path.join(dirpath, name)
        if _is_link_loop(path):
          note(path, "symbolic link loop")
        else:
          yield path


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


def enumerate_source(root: str, layout: str, group_from: str = "") -> Enumeration:
  """The candidates of a source; `group_from` (folders layout only) names each one's group."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--src {root} is not a directory")
  if layout == "auto":
    layout = detect_layout(root)
  if layout not in LAYOUTS:
    raise ValueError(f"--layout must be one of auto, {', '.join(LAYOUTS)}; got {layout!r}")
  if group_from:
    if layout != "folders":
      raise ValueError(f"--group_from applies to --layout folders; the source {root} is read "
                       f"as layout {layout}")
    return enumerate_folders(root, group_from)
  return LAYOUTS[layout](root)
