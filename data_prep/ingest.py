"""Ingests a download of the benchmark into lossless, checksummed ArrayRecord shards.

  python -m data_prep.ingest --src PATH --out PATH [--layout auto|tree|parquet|folders]
      [--group_from dirname|regex:PATTERN] [--num_workers N --worker_index I] [--merge] [--jobs J]

The source is enumerated (data_prep.sources) into a fixed, ordered list of candidates, cut into
chunks of --chunk_size (data_prep.sample_real hands in a list of its own through run_worker).
Each chunk becomes one shard plus a small JSON file saying what went in and what was skipped; the
JSON is written after the shard is complete, so a chunk with a JSON is done and a rerun after a
kill (SIGKILL included) redoes only the chunks without one. Chunk c belongs to worker c % N, so N
machines can ingest one download side by side; `--merge` (run once after them, or implied with a
single worker) checks that every chunk is there and writes dataset.json, index.parquet and the
ingest report.

Ingest never dies on a bad file: every candidate is either written or reported with its path and
reason, and files seen = records written + files skipped. Pixels are decoded once here, fully, to
catch truncated files; the stored bytes are the original file bytes. Odd but decodable files are
written with a warning: CMYK, 16-bit (grayscale or RGB), alpha, palette, grayscale, a wrong
extension, an EXIF rotation, and an extreme shape (an aspect ratio above MAX_ASPECT or a side
under MIN_SIDE pixels, which a square resize or centre crop distorts or mostly throws away).

`--group_from` (folders layout) gives every record a group, e.g. its prompt, for group-disjoint
splits (`data_prep.split --protocol group`); see data_prep.sources.GroupRule. It is part of the
plan: a resume with another value is refused.

The report audits shortcuts: file formats per class, and (iab_jax.data.shortcuts) every
(format, width, height) group whose label mix is far from the dataset's.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import time
from typing import Any

from data_prep import _cli, sources
from iab_jax.data import cache, generators, records, shortcuts

INGEST_DIR = "ingest"
DEFAULT_MAX_PIXELS = records.MAX_PIXELS
KNOWN_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# Extreme shapes: the benchmark's transforms resize to a square (256x256) or resize the short
# side and crop the centre, so an image more than MAX_ASPECT times wider than high (or higher
# than wide) is squashed or mostly cropped away, and one with a side under MIN_SIDE pixels is
# magnified 8x or more: either way little of its generator's trace reaches the model.
MAX_ASPECT = 10
MIN_SIDE = 32


# ---------------------------------------------------------------------------------------------
# Checking one image.
# ---------------------------------------------------------------------------------------------
def inspect_image(data: bytes, candidate: sources.Candidate, max_pixels: int):
  """(metadata fields, warnings) for a good image, or raises BadImage with the reason."""
  try:
    img = records.open_image(data, max_pixels)
  except records.UnreadableImage as e:
    raise BadImage(str(e)) from None
  fmt, (width, height), mode = img.format, img.size, img.mode
  sixteen_bit_color = _sixteen_bit_color(img, data)
  if fmt not in KNOWN_FORMATS:
    raise BadImage(f"unsupported format {fmt}")
  frames = getattr(img, "n_frames", 1)
  if frames > 1:
    raise BadImage(f"animated {fmt} with {frames} frames")
  try:
    records.load_rgb(img)
  except records.UnreadableImage as e:
    raise BadImage(str(e)) from None

  warnings = []
  ext = os.path.splitext(candidate.filename)[1].lower()
  expected = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(ext)
  if expected and expected != fmt:
    warnings.append(f"extension {ext} but the content is {fmt}")
  if mode == "CMYK":
    warnings.append("CMYK image, converted to RGB on decode")
  elif mode.startswith("I;16") or mode == "I":
    warnings.append(f"{mode} (16-bit) image, scaled to 8 bits on decode (the official loader "
                    "clips it to 255 instead: records.decode(sixteen_bit='clip'))")
  elif sixteen_bit_color:
    warnings.append(f"16-bit {mode} image, reduced to 8 bits on decode (PIL keeps the high byte "
                    "of each value)" + (", alpha dropped" if mode == "RGBA" else ""))
  elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
    warnings.append(f"{mode} image with alpha, alpha dropped on decode")
  elif mode == "P":
    warnings.append("palette image, converted to RGB on decode")
  elif mode in ("L", "1"):
    warnings.append(f"grayscale ({mode}) image, converted to RGB on decode")
  shape = extreme_shape(width, height)
  if shape:
    warnings.append(shape)
  orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
  if orientation not in (1, None):
    warnings.append(f"EXIF orientation {orientation} not applied (pixels used as stored, "
                    "as the official loader does)")

  crop = None
  if candidate.crop_margin:
    right, bottom = candidate.crop_margin
    if width <= right or height <= bottom:
      raise BadImage(f"{width}x{height} too small for the {right}x{bottom} watermark crop")
    crop = (0, 0, width - right, height - bottom)
  fields = dict(width=width, height=height, format=fmt, crop=crop,
                extra={"mode": mode, "file_size": len(data)})
  return fields, warnings


def _sixteen_bit_color(img, data: bytes) -> bool:
  """Whether an RGB(A) image stores 16 bits per sample (PIL opens it as 8-bit RGB(A))."""
  if img.mode not in ("RGB", "RGBA"):
    return False
  if img.format == "PNG" and data[12:16] == b"IHDR" and len(data) > 24:
    return data[24] == 16  # the IHDR bit depth
  return any(";16" in str(tile[3] if len(tile) > 3 else "") for tile in getattr(img, "tile", []))


def extreme_shape(width: int, height: int) -> str | None:
  """The warning for an extreme shape (see MAX_ASPECT and MIN_SIDE), or None."""
  long, short = max(width, height), min(width, height)
  reasons = []
  if long > MAX_ASPECT * short:
    reasons.append(f"aspect ratio {long / short:.1f}:1 > {MAX_ASPECT}:1")
  if short < MIN_SIDE:
    reasons.append(f"a side of {short} px < {MIN_SIDE} px")
  if not reasons:
    return None
  return (f"extreme shape {width}x{height} ({' and '.join(reasons)}): a square resize or centre "
          "crop distorts it or keeps little of it")


class BadImage(Exception):
  pass


def _read_file(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _check(task):
  """Pool worker: reads (unless given bytes) and checks one candidate."""
  candidate, data, max_pixels, label = task
  try:
    if data is None:
      try:
        data = _read_file(candidate.path)
      except OSError as e:
        raise BadImage(f"unreadable ({type(e).__name__}: {e.strerror or e})") from None
    fields, warnings = inspect_image(data, candidate, max_pixels)
  except BadImage as e:
    return candidate, None, str(e)
  except Exception as e:  # anything else in a third-party decoder is still one bad file
    return candidate, None, f"unexpected {type(e).__name__}: {e}"
  record = records.ImageRecord(
      image=data, key=candidate.key, generator=candidate.generator, label=label,
      levels=generators.family_levels(candidate.generator), semantic=candidate.semantic,
      source=candidate.source, sha256=records.sha256_bytes(data), caption_id=candidate.caption_id,
      caption=candidate.caption, filename=candidate.filename, group=candidate.group,
      **{**fields, "extra": {**candidate.extra, **fields["extra"]}})
  return candidate, record, warnings


class ParquetBytes:
  """Reads the image bytes of given rows of a parquet file, one row group at a time."""

  def __init__(self):
    self._file_path, self._file, self._group, self._rows = None, None, None, None

  def get(self, path: str, row: int) -> bytes:
    import pyarrow.parquet as pq

    if path != self._file_path:
      self._file_path, self._file, self._group = path, pq.ParquetFile(path), None
      meta = self._file.metadata
      self._starts = [0]
      for g in range(meta.num_row_groups):
        self._starts.append(self._starts[-1] + meta.row_group(g).num_rows)
    group = max(g for g in range(len(self._starts) - 1) if self._starts[g] <= row)
    if group != self._group:
      self._group = group
      self._rows = self._file.read_row_group(group, columns=["image"]).column("image").to_pylist()
    value = self._rows[row - self._starts[group]]
    if isinstance(value, dict):  # the datasets library's Image feature: {"bytes", "path"}
      value = value.get("bytes")
    return value or b""


class LmdbBytes:
  """Reads values of LMDB environments (LSUN's official exports), each opened once per chunk."""

  def __init__(self):
    self._envs = {}

  def get(self, path: str, key: str) -> bytes:
    import lmdb

    if path not in self._envs:
      # lock=False: the exports are read-only and may sit on a read-only file system.
      self._envs[path] = lmdb.open(path, readonly=True, lock=False, readahead=False)
    with self._envs[path].begin() as txn:
      value = txn.get(key.encode())
    if value is None:
      raise KeyError(f"key {key} is not in the database")
    return value

  def close(self) -> None:
    for env in self._envs.values():
      env.close()
    self._envs = {}


# ---------------------------------------------------------------------------------------------
# Plan, chunks, merge.
# ---------------------------------------------------------------------------------------------
def _paths(out: str):
  base = os.path.join(out, INGEST_DIR)
  return {
      "plan": os.path.join(base, "plan.json"),
      "ignored": os.path.join(base, "ignored.jsonl"),
      "chunks": os.path.join(base, "chunks"),
      "report_json": os.path.join(out, "ingest_report.json"),
      "report_txt": os.path.join(out, "ingest_report.txt"),
  }


def chunk_json(out: str, chunk: int) -> str:
  return os.path.join(_paths(out)["chunks"], f"chunk-{chunk:06d}.json")


def chunk_shard(out: str, chunk: int) -> str:
  return os.path.join(out, records.RECORDS_DIR, f"chunk-{chunk:06d}.array_record")


def atomic_json(path: str, obj: Any, indent: int | None = None) -> None:
  """Writes JSON so that readers see the old file or the whole new one, even across a crash.

  The temporary name is per process: workers that finish together may write the same file.
  """
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def make_plan(src: str, out: str, layout: str, chunk_size: int,
              enumeration: sources.Enumeration | None = None, group_from: str = ""):
  """Enumerates the source; the first run stores the plan, later runs must find the same one.

  A caller with its own candidate list passes it as `enumeration`; `src` and `layout` then only
  name where it came from (data_prep.sample_real: its selection file and "sample_real").
  """
  enum = (enumeration if enumeration is not None
          else sources.enumerate_source(src, layout, group_from))
  keys = "\n".join(c.key for c in enum.candidates).encode()
  plan = {
      "src": os.path.abspath(src),
      "layout": layout if layout != "auto" else sources.detect_layout(src),
      "chunk_size": chunk_size,
      "num_candidates": len(enum.candidates),
      "num_chunks": -(-len(enum.candidates) // chunk_size),
      "classes": enum.classes,
      "num_ignored": len(enum.ignored),
      "fingerprint": hashlib.sha256(keys).hexdigest(),
      "group_from": group_from,
  }
  paths = _paths(out)
  if os.path.exists(paths["plan"]):
    with open(paths["plan"]) as f:
      stored = json.load(f)
    for field in ("group_from", "fingerprint", "chunk_size", "classes"):
      if stored.get(field, "") != plan[field]:
        why = ("This ingest was started with another --group_from" if field == "group_from"
               else "The source changed since the ingest started")
        raise SystemExit(
            f"error: {out} holds an ingest of a different source or setting ({field} differs: "
            f"stored {str(stored.get(field, ''))[:80]!r}, now {str(plan[field])[:80]!r}). "
            f"{why}; use a new --out or delete it to start again.")
  else:
    os.makedirs(os.path.dirname(paths["ignored"]), exist_ok=True)
    tmp = f"{paths['ignored']}.tmp{os.getpid()}"  # workers may start together
    with open(tmp, "w") as f:
      for path, why in enum.ignored:
        f.write(json.dumps({"path": path, "reason": why}) + "\n")
    os.replace(tmp, paths["ignored"])
    atomic_json(paths["plan"], plan)
  return plan, enum.candidates


def ingest_chunk(out: str, chunk: int, candidates, label_map, max_pixels: int, pool, progress):
  """Writes one chunk's shard and then its JSON; returns the chunk summary."""
  parquet, lmdb_store = ParquetBytes(), LmdbBytes()
  checks, failed = [], []
  for c in candidates:
    data = None
    if c.row >= 0 or c.lmdb_key:
      store = "parquet" if c.row >= 0 else "lmdb"
      try:
        data = parquet.get(c.path, c.row) if c.row >= 0 else lmdb_store.get(c.path, c.lmdb_key)
      except Exception as e:  # a damaged row group or database page loses its images only
        failed.append((c, f"{store} read failed ({type(e).__name__}: {e})"))
        continue
    checks.append((c, data, max_pixels, label_map[c.generator]))
  lmdb_store.close()
  summary = {"chunk": chunk, "num_candidates": len(candidates), "skipped": [], "warnings": []}
  writer = records.ShardWriter(chunk_shard(out, chunk))
  results = pool.map(_check, checks, chunksize=4) if pool else map(_check, checks)
  for candidate, record, info in results:
    if record is None:
      failed.append((candidate, info))
    else:
      writer.write(record)
      summary["warnings"] += [{"path": _where(candidate), "key": candidate.key, "warning": w}
                              for w in info]
    progress.update(1)
  for candidate, reason in failed:
    summary["skipped"].append({"path": _where(candidate), "key": candidate.key, "reason": reason})
  progress.update(len(candidates) - len(checks))
  writer.close()
  summary["records"] = writer.metadata
  summary["shard_sha256"] = records.sha256_file(writer.path)
  atomic_json(chunk_json(out, chunk), summary)
  return summary


def _where(candidate: sources.Candidate) -> str:
  if candidate.lmdb_key:
    return f"{candidate.path}#{candidate.lmdb_key}"
  return candidate.path if candidate.row < 0 else f"{candidate.path}#{candidate.row}"


def run_worker(src: str, out: str, layout: str = "auto", num_workers: int = 1,
               worker_index: int = 0, chunk_size: int = 256, jobs: int = 0,
               max_pixels: int = DEFAULT_MAX_PIXELS, quiet: bool = False,
               enumeration: sources.Enumeration | None = None, group_from: str = ""):
  """Ingests this worker's chunks that are not done yet. Returns (done, total) chunk counts.

  `enumeration` replaces the enumeration of `src` (see make_plan); `group_from` names each
  record's group (folders layout, see data_prep.sources.GroupRule).
  """
  if not 0 <= worker_index < num_workers:
    raise SystemExit(f"error: --worker_index must be in [0, {num_workers}); got {worker_index}")
  plan, candidates = make_plan(src, out, layout, chunk_size, enumeration, group_from)
  label_map = {name: i for i, name in enumerate(plan["classes"])}
  mine = [c for c in range(plan["num_chunks"]) if c % num_workers == worker_index]
  todo = [c for c in mine if not os.path.exists(chunk_json(out, c))]
  for c in todo:  # a partial shard of a killed run is redone from scratch
    for leftover in (chunk_shard(out, c) + ".tmp", chunk_shard(out, c)):
      if os.path.exists(leftover):
        os.remove(leftover)
  n_todo = sum(len(candidates[c * chunk_size:(c + 1) * chunk_size]) for c in todo)
  if not quiet:
    print(f"ingest: {plan['num_candidates']} images in {plan['num_chunks']} chunks; worker "
          f"{worker_index}/{num_workers} has {len(mine)} chunks, {len(todo)} to do "
          f"({n_todo} images)", flush=True)
  progress = _progress(n_todo, quiet)
  jobs = jobs or os.cpu_count() or 1
  pool = cache.worker_pool(jobs) if jobs > 1 and todo else None
  try:
    for c in todo:
      ingest_chunk(out, c, candidates[c * chunk_size:(c + 1) * chunk_size], label_map,
                   max_pixels, pool, progress)
  finally:
    progress.close()
    if pool:
      pool.shutdown()
  return len(mine), plan["num_chunks"]


def _progress(total: int, quiet: bool):
  from tqdm import tqdm

  return tqdm(total=total, unit="img", disable=quiet or total == 0, smoothing=0.1,
              dynamic_ncols=True, file=sys.stderr)


def merge(out: str, quiet: bool = False, targets: dict[str, int] | None = None) -> dict:
  """Checks that every chunk is done and writes dataset.json, index.parquet and the report.

  `targets`, records wanted per semantic class, adds a wanted-against-written table to the report.
  """
  paths = _paths(out)
  if not os.path.exists(paths["plan"]):
    raise SystemExit(f"error: --out {out} has no ingest plan ({INGEST_DIR}/plan.json); run the "
                     "ingest workers first")
  with open(paths["plan"]) as f:
    plan = json.load(f)
  missing = [c for c in range(plan["num_chunks"]) if not os.path.exists(chunk_json(out, c))]
  if missing:
    raise SystemExit(f"error: {len(missing)} of {plan['num_chunks']} chunks are not done yet "
                     f"(first: {missing[:10]}); rerun the workers (chunk c belongs to worker "
                     "c % num_workers), then --merge")
  shards, hashes, metadata, skipped, warnings = [], [], [], [], []
  for c in range(plan["num_chunks"]):
    with open(chunk_json(out, c)) as f:
      summary = json.load(f)
    if records.sha256_file(chunk_shard(out, c)) != summary["shard_sha256"]:  # the only read of the shard
      raise SystemExit(f"error: shard of chunk {c} does not match its checksum; delete "
                       f"{chunk_json(out, c)} and rerun the worker to redo it")
    skipped += summary["skipped"]
    warnings += summary["warnings"]
    if summary["records"]:
      shards.append(chunk_shard(out, c))
      hashes.append(summary["shard_sha256"])
      metadata += summary["records"]
  with open(paths["ignored"]) as f:
    ignored = [json.loads(line) for line in f]
  info = records.write_dataset_metadata(
      out, shards, metadata, plan["classes"], shard_sha256=hashes,
      source={"path": plan["src"], "layout": plan["layout"]})
  report = build_report(plan, metadata, skipped, warnings, ignored, targets)
  atomic_json(paths["report_json"], report)
  text = format_report(report)
  with open(paths["report_txt"], "w") as f:
    f.write(text)
  if not quiet:
    print(text)
  return info


# ---------------------------------------------------------------------------------------------
# Report and format audit.
# ---------------------------------------------------------------------------------------------
def format_audit(metadata) -> dict:
  """Per class: file formats, modes, image sizes and file sizes."""
  audit = {}
  by_class = collections.defaultdict(list)
  for m in metadata:
    by_class[m["generator"]].append(m)
  for name, rows in by_class.items():
    formats = collections.Counter(r["format"] for r in rows)
    sizes = collections.Counter(f"{r['width']}x{r['height']}" for r in rows)
    file_sizes = sorted(r["extra"].get("file_size", 0) for r in rows)
    audit[name] = {
        "count": len(rows),
        "formats": dict(formats),
        "jpeg_fraction": formats.get("JPEG", 0) / len(rows),
        "modes": dict(collections.Counter(r["extra"].get("mode", "") for r in rows)),
        "top_sizes": dict(sizes.most_common(5)),
        "num_sizes": len(sizes),
        "median_file_kb": file_sizes[len(file_sizes) // 2] / 1024,
    }
  return audit


def shortcut_warnings(audit: dict) -> list[str]:
  """Format differences between classes that a classifier can learn instead of the generator."""
  notes = []
  format_sets = {name: frozenset(a["formats"]) for name, a in audit.items()}
  for name, formats in sorted(format_sets.items()):
    others = [n for n in format_sets if n != name]
    if not others:
      continue
    only_here = formats - frozenset().union(*(format_sets[n] for n in others))
    if only_here:
      share = sum(audit[name]["formats"][f] for f in only_here) / audit[name]["count"]
      notes.append(
          f"format shortcut: {share:.0%} of class '{name}' is {'/'.join(sorted(only_here))}, a "
          "format no other class has; a model can separate it by compression traces alone "
          "(in the official data the real class is partly JPEG while every generated image is PNG)")
  return notes


def _reason_counts(reasons) -> dict[str, int]:
  """Counts of reasons, each taken up to its first parenthesis (the detail of one file)."""
  return dict(collections.Counter(r.split(" (")[0] for r in reasons))


def build_report(plan, metadata, skipped, warnings, ignored, targets=None) -> dict:
  audit = format_audit(metadata)
  sizes = shortcuts.size_audit([m["format"] for m in metadata], [m["width"] for m in metadata],
                               [m["height"] for m in metadata],
                               [m["generator"] for m in metadata])
  report = {
      "source": plan["src"],
      "layout": plan["layout"],
      "files_left_out_by_selection_rules": len(ignored),
      "left_out_reasons": _reason_counts(i["reason"] for i in ignored),
      "files_seen": plan["num_candidates"],
      "records_written": len(metadata),
      "files_skipped": len(skipped),
      "skip_reasons": _reason_counts(s["reason"] for s in skipped),
      "skipped": skipped,
      "warnings": warnings,
      "ignored": ignored[:1000],
      "format_audit": audit,
      "size_audit": sizes,
      "shortcuts": shortcut_warnings(audit) + shortcuts.size_warnings(sizes),
      "counts": _counts(metadata),
  }
  if plan.get("group_from"):
    groups = collections.Counter(m.get("group", "") for m in metadata)
    report["groups"] = {"group_from": plan["group_from"], "num_groups": len(groups),
                        "largest": dict(groups.most_common(5)),
                        "smallest": dict(sorted(groups.items(), key=lambda kv: kv[1])[:5])}
  if targets is not None:
    written = collections.Counter(m["semantic"] for m in metadata)
    report["targets"] = {name: {"target": n, "written": written.get(name, 0)}
                         for name, n in targets.items()}
  return report


def _counts(metadata):
  counts = collections.defaultdict(collections.Counter)
  for m in metadata:
    counts[m["generator"]][m["semantic"]] += 1
  return {g: dict(c) for g, c in counts.items()}


def format_report(report: dict) -> str:
  lines = [
      f"ingest of {report['source']} ({report['layout']}): {report['files_seen']} files seen = "
      f"{report['records_written']} records written + {report['files_skipped']} skipped; "
      f"{report['files_left_out_by_selection_rules']} left out by the selection rules; "
      f"{len(report['warnings'])} warnings",
  ]
  if report.get("left_out_reasons"):
    lines.append("left out: " + "; ".join(f"{n} {why}" for why, n in
                                           report["left_out_reasons"].items()))
  if "groups" in report:
    g = report["groups"]
    lines.append(f"groups (--group_from {g['group_from']}): {g['num_groups']}; largest "
                 + ", ".join(f"{k} ({v})" for k, v in g["largest"].items()))
  if report["skipped"]:
    lines.append("skipped:")
    lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"][:50]]
    if len(report["skipped"]) > 50:
      lines.append(f"  ... {len(report['skipped']) - 50} more in ingest_report.json")
  if report["warnings"]:
    lines.append("warnings:")
    lines += [f"  {w['path']}: {w['warning']}" for w in report["warnings"][:20]]
    if len(report["warnings"]) > 20:
      lines.append(f"  ... {len(report['warnings']) - 20} more in ingest_report.json")
  lines.append("format audit (class: count, formats, JPEG share, sizes):")
  for name, a in report["format_audit"].items():
    fmts = ", ".join(f"{k} {v}" for k, v in sorted(a["formats"].items()))
    sizes = ", ".join(f"{k} ({v})" for k, v in a["top_sizes"].items())
    lines.append(f"  {name}: {a['count']}; {fmts}; JPEG {a['jpeg_fraction']:.0%}; "
                 f"{a['num_sizes']} sizes, top {sizes}; median {a['median_file_kb']:.0f} KiB")
  lines += [f"WARNING {s}" for s in report["shortcuts"]]
  if "targets" in report:
    lines.append("per class: target -> written")
    for name, t in report["targets"].items():
      short = t["target"] - t["written"]
      lines.append(f"  {name}: {t['target']} -> {t['written']}"
                   + (f" ({short} short)" if short else ""))
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.ingest", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="the download: official tree, parquet or folders")
  parser.add_argument("--out", required=True, help="dataset directory to write")
  parser.add_argument("--layout", default="auto", choices=["auto", *sources.LAYOUTS])
  parser.add_argument("--group_from", default="",
                      help="folders layout: each record's group for group-disjoint splits, "
                      "'dirname' (its folder below the label folder; the file stem for a file "
                      "directly in it) or 'regex:PATTERN' (first capture group, or the whole "
                      "match, of re.search on its path below the label folder; files it does not "
                      "match are left out and listed)")
  parser.add_argument("--num_workers", type=int, default=1, help="machines sharing the ingest")
  parser.add_argument("--worker_index", type=int, default=0, help="this machine's index")
  parser.add_argument("--merge", action="store_true",
                      help="only merge the finished chunks of all workers")
  parser.add_argument("--jobs", type=int, default=0, help="decode processes (0: one per core)")
  parser.add_argument("--chunk_size", type=int, default=256, help="images per shard")
  parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                      help="larger images are refused as decompression bombs")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  if args.chunk_size < 1 or args.num_workers < 1:
    parser.error("--chunk_size and --num_workers must be >= 1")
  start = time.time()
  if args.merge:
    _cli.require_directory(args.out, "--out", "the dataset directory the ingest workers wrote")
  else:
    _check_source(args)
    run_worker(args.src, args.out, args.layout, args.num_workers, args.worker_index,
               args.chunk_size, args.jobs, args.max_pixels, args.quiet, group_from=args.group_from)
  finish(args, start, merge)
  return 0


def _check_source(args) -> None:
  """User errors in --src, --out and --group_from, before any file is read."""
  _cli.require_directory(args.src, "--src", "the download: the official folder tree, the "
                         "parquet copy, or folders root/{label}/**/*.png")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise _cli.fail(f"--out {args.out}: not a directory; expected the dataset directory to write")
  if args.group_from:
    try:
      sources.GroupRule.parse(args.group_from)
    except ValueError as e:
      raise _cli.fail(str(e)) from None
    layout = args.layout if args.layout != "auto" else sources.detect_layout(args.src)
    if layout != "folders":
      raise _cli.fail(f"--group_from applies to --layout folders, but --src {args.src} is read "
                      f"as layout {layout}{' (detected)' if args.layout == 'auto' else ''}")


def finish(args, start: float, merge_fn) -> None:
  """The CLI's last step: merge when asked or when this was the only worker, else say what next."""
  if args.merge or args.num_workers == 1:
    info = merge_fn(args.out, args.quiet)
    if not args.quiet:
      print(f"wrote {info['num_records']} records in {len(info['shards'])} shards to {args.out} "
            f"({time.time() - start:.1f} s)")
  elif not args.quiet:
    print(f"worker {args.worker_index} done; run with --merge once every worker has finished")


if __name__ == "__main__":
  sys.exit(_cli.run(main))
