"""Ingest: official tree and parquet layouts, selection rules, bad files, kill and resume, workers."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_prep import ingest, sources
from iab_jax.data import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def png_bytes(seed, size=(24, 20), mode="RGB"):
  rng = np.random.default_rng(seed)
  arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).convert(mode).save(buf, "PNG")
  return buf.getvalue()


def jpeg_bytes(seed, size=(24, 20), **kw):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
      buf, "JPEG", **kw)
  return buf.getvalue()


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def make_tree(root, per_folder=3, size=(24, 20)):
  """A synthetic official download with files the selection rules keep and leave out.

  Returns the set of keys that must be ingested.
  """
  expected, seed = set(), 0
  layout = {"SDXL": ["AnimalFace/cat", "Scene/bedroom", "COCO"],
            "mid-6.0": ["AnimalFace/cat"], "grok3": ["HumanFace/FFHQ"],
            "real": ["AnimalFace/cat", "Scene/bedroom", "COCO", "HumanFace/FFHQ"]}
  semantic = {"AnimalFace/cat": "cat", "Scene/bedroom": "bedroom", "COCO": "COCO",
              "HumanFace/FFHQ": "FFHQ"}
  for model, rels in layout.items():
    shape = (size[0] + 100, size[1] + 50) if model == "grok3" else size  # room for the crop
    for rel in rels:
      folder = os.path.join(root, model, rel)
      for p in range(per_folder):
        for k in range(4):
          seed += 1
          if model == "real":
            name, data = (f"img{p}_{k}.jpg", jpeg_bytes(seed, size)) if k % 2 else (
                f"img{p}_{k}.png", png_bytes(seed, size))
            keep = True
          else:
            name, data = f"gen_p{p}_i{k}.png", png_bytes(seed, shape)
            keep = k <= (3 if model == "mid-6.0" else 1)
          write(os.path.join(folder, name), data)
          if keep:
            expected.add(f"{model}/{semantic[rel]}/{name}")
      # Left out by the rules: P >= 1000, not PNG, not named *_p*_i*, a text file.
      if model != "real":
        write(os.path.join(folder, "gen_p1000_i0.png"), png_bytes(seed + 1000))
        write(os.path.join(folder, "gen_p5_i0.jpg"), jpeg_bytes(seed + 2000))
        write(os.path.join(folder, "random.png"), png_bytes(seed + 3000))
      write(os.path.join(folder, "notes.txt"), b"not an image")
  return expected


def ingest_dataset(src, out, **kw):
  kw.setdefault("jobs", 1)
  kw.setdefault("quiet", True)
  ingest.run_worker(src, out, **kw)
  ingest.merge(out, quiet=True)
  return records.Dataset(out)


def test_official_tree_selection_rules(tmp_path):
  expected = make_tree(tmp_path / "src")
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), chunk_size=7)
  keys = list(ds.column("key"))
  assert len(keys) == len(set(keys))
  assert set(keys) == expected
  assert ds.classes == ["SDXL", "grok3", "mid-6.0", "real"]  # the official label order
  labels, gens = ds.column("label"), ds.column("generator")
  assert all(ds.classes[l] == g for l, g in zip(labels, gens))
  assert ds.verify(deep=True) == []
  with open(tmp_path / "out" / "ingest_report.json") as f:
    report = json.load(f)
  assert report["files_seen"] == report["records_written"] + report["files_skipped"]
  assert report["records_written"] == len(expected)
  ignored = {os.path.basename(i["path"]) for i in report["ignored"]}
  assert {"gen_p1000_i0.png", "gen_p5_i0.jpg", "random.png", "notes.txt", "gen_p0_i2.png"} <= ignored
  # Midjourney keeps K up to 3.
  assert "mid-6.0/cat/gen_p0_i3.png" in keys


def test_records_are_original_bytes_and_metadata(tmp_path):
  make_tree(tmp_path / "src", per_folder=1)
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"))
  for i in range(len(ds)):
    rec = ds[i]
    gen, sem, name = rec.key.split("/")
    rel = {"cat": "AnimalFace/cat", "bedroom": "Scene/bedroom", "COCO": "COCO",
           "FFHQ": "HumanFace/FFHQ"}[sem]
    with open(tmp_path / "src" / gen / rel / name, "rb") as f:
      original = f.read()
    assert rec.image == original
    assert rec.sha256 == records.sha256_bytes(original)
    assert (rec.width, rec.height) == ((124, 70) if gen == "grok3" else (24, 20))
    assert rec.format == ("JPEG" if name.endswith(".jpg") else "PNG")
    if gen == "real":
      assert rec.levels == (1, 2, 5, 22)
    if gen == "SDXL":
      assert rec.levels == (0, 1, 1, 10)
      assert rec.caption_id == f"{sem}/p{int(name.split('_p')[1].split('_')[0])}"


def test_grok3_watermark_crop(tmp_path):
  write(tmp_path / "src" / "grok3" / "COCO" / "a_p0_i0.png", png_bytes(1, size=(300, 200)))
  write(tmp_path / "src" / "grok3" / "COCO" / "b_p1_i0.png", png_bytes(2, size=(80, 200)))
  write(tmp_path / "src" / "real" / "COCO" / "r.png", png_bytes(3, size=(300, 200)))
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"))
  by_key = {ds[i].key: ds[i] for i in range(len(ds))}
  grok = by_key["grok3/COCO/a_p0_i0.png"]
  img = records.decode(grok)
  assert img.size == (200, 150)
  full = Image.open(io.BytesIO(grok.image)).convert("RGB")
  np.testing.assert_array_equal(np.asarray(img), np.asarray(full)[:150, :200])
  assert records.decode(by_key["real/COCO/r.png"]).size == (300, 200)
  # Too small to crop: reported, not ingested.
  assert "grok3/COCO/b_p1_i0.png" not in by_key


def test_selection_cap_in_sorted_order(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "MAX_PER_FOLDER", 5)
  for p in (9, 3, 12, 1, 7, 0, 5):
    write(tmp_path / "src" / "SD1_5" / "COCO" / f"x_p{p}_i0.png", png_bytes(p))
  enum = sources.enumerate_source(str(tmp_path / "src"), "tree")
  names = [c.filename for c in enum.candidates]
  assert names == sorted(f"x_p{p}_i0.png" for p in (9, 3, 12, 1, 7, 0, 5))[:5]
  assert sum("cap" in why for _, why in enum.ignored) == 2


def make_parquet(root, tree_root):
  """The Hugging Face layout of the same images as a synthetic tree."""
  for model in sorted(os.listdir(tree_root)):
    for rel in ("AnimalFace/cat", "Scene/bedroom", "COCO", "HumanFace/FFHQ"):
      folder = os.path.join(tree_root, model, rel)
      if not os.path.isdir(folder):
        continue
      main, _, sub = rel.partition("/")
      names = sorted(os.listdir(folder))[::-1]  # file order differs from filename order
      images = []
      for n in names:
        with open(os.path.join(folder, n), "rb") as f:
          images.append(f.read())
      table = pa.table({
          # The datasets library stores images as a struct of bytes and path.
          "image": pa.array([{"bytes": b, "path": n} for b, n in zip(images, names)]),
          "model": [model] * len(names), "main_category": [main] * len(names),
          "sub_category": [sub or main] * len(names), "filename": names})
      path = os.path.join(root, "data", model, main, f"{sub or main}.parquet")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      pq.write_table(table, path, row_group_size=4)


def test_parquet_matches_tree(tmp_path):
  expected = make_tree(tmp_path / "tree")
  make_parquet(str(tmp_path / "hf"), str(tmp_path / "tree"))
  assert sources.detect_layout(str(tmp_path / "hf")) == "parquet"
  assert sources.detect_layout(str(tmp_path / "tree")) == "tree"
  a = ingest_dataset(str(tmp_path / "tree"), str(tmp_path / "a"), chunk_size=5)
  b = ingest_dataset(str(tmp_path / "hf"), str(tmp_path / "b"), chunk_size=9)
  assert set(b.column("key")) == expected
  pairs_a = sorted(zip(a.column("key"), a.column("sha256")))
  pairs_b = sorted(zip(b.column("key"), b.column("sha256")))
  assert pairs_a == pairs_b
  assert a.classes == b.classes


def huge_png(width, height):
  """A valid PNG header claiming a huge size, with a tiny body (a decompression bomb's header)."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                              + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
          + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def bad_file_corpus(root):
  """Files of many kinds under root/{label}/; returns (good names, bad names, warned names)."""
  good, bad, warned = set(), set(), set()

  def put(name, data, kind):
    write(os.path.join(root, "cls", name), data)
    {"good": good, "bad": bad, "warn": warned}[kind].add(name)

  put("ok.png", png_bytes(1), "good")
  put("ok.jpg", jpeg_bytes(2), "good")
  put("tiny.png", png_bytes(3, size=(1, 1)), "good")
  webp = io.BytesIO()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(webp, "WEBP", lossless=True)
  put("ok.webp", webp.getvalue(), "good")
  put("zero.png", b"", "bad")
  full = png_bytes(4, size=(64, 64))
  put("truncated.png", full[: len(full) // 2], "bad")
  jpg = jpeg_bytes(5, size=(64, 64))
  put("truncated.jpg", jpg[: len(jpg) // 2], "bad")
  put("text.png", b"<html>404 not found</html>", "bad")
  put("random_bytes.jpg", np.random.default_rng(0).bytes(500), "bad")
  corrupt = bytearray(full)
  corrupt[len(corrupt) // 2:len(corrupt) // 2 + 40] = b"\x00" * 40
  put("corrupt_idat.png", bytes(corrupt), "bad")
  put("bomb.png", huge_png(100_000, 100_000), "bad")
  gif = io.BytesIO()
  frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 128, 255)]
  frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
  put("animated.png", gif.getvalue(), "bad")  # a GIF under a PNG name
  awebp = io.BytesIO()
  frames[0].save(awebp, "WEBP", save_all=True, append_images=frames[1:])
  put("animated.webp", awebp.getvalue(), "bad")
  # Decodable oddities: ingested, each with a warning.
  put("png_named.jpg", png_bytes(6), "warn")
  cmyk = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).convert("CMYK").save(cmyk, "JPEG")
  put("cmyk.jpg", cmyk.getvalue(), "warn")
  sixteen = io.BytesIO()
  Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(sixteen, "PNG")
  put("sixteen_bit.png", sixteen.getvalue(), "warn")
  put("rgba.png", png_bytes(7, mode="RGBA"), "warn")
  put("palette.png", png_bytes(8, mode="P"), "warn")
  put("gray.png", png_bytes(9, mode="L"), "warn")
  exif = Image.Exif()
  exif[0x0112] = 6
  rotated = io.BytesIO()
  Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(rotated, "JPEG", exif=exif.tobytes())
  put("exif_rotated.jpg", rotated.getvalue(), "warn")
  # Unreadable: a dangling link always; permissions only bite when not root.
  os.symlink(os.path.join(root, "nowhere.png"), os.path.join(root, "cls", "dangling.png"))
  bad.add("dangling.png")
  locked = os.path.join(root, "cls", "locked.png")
  write(locked, png_bytes(10))
  os.chmod(locked, 0)
  try:
    open(locked, "rb").close()
    good.add("locked.png")  # running as root: permissions do not stop reading
  except PermissionError:
    bad.add("locked.png")
  return good, bad, warned


def test_bad_files_reported_good_files_kept(tmp_path):
  good, bad, warned = bad_file_corpus(str(tmp_path / "src"))
  assert len(bad) + len(warned) >= 15
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders",
                      chunk_size=4, max_pixels=4096 * 4096)
  written = {k.split("/", 1)[1] for k in ds.column("key")}
  assert written == good | warned
  with open(tmp_path / "out" / "ingest_report.json") as f:
    report = json.load(f)
  skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
  assert set(skipped) == bad
  assert report["files_seen"] == len(written) + len(skipped)
  assert "decompression bomb" in skipped["bomb.png"]
  assert "animated" in skipped["animated.png"] and "animated" in skipped["animated.webp"]
  assert skipped["zero.png"] == "empty file"
  assert "truncated" in skipped["truncated.png"] and "truncated" in skipped["truncated.jpg"]
  warnings = {os.path.basename(w["path"]): w["warning"] for w in report["warnings"]}
  assert set(warnings) == warned
  assert "content is PNG" in warnings["png_named.jpg"]
  assert "EXIF orientation 6" in warnings["exif_rotated.jpg"]
  # Every ingested record decodes to RGB of its recorded size.
  for i in range(len(ds)):
    rec = ds[i]
    img = records.decode(rec)
    assert img.mode == "RGB" and img.size == (rec.width, rec.height)
  # 16-bit is scaled, not clipped: the brightest pixel stays bright.
  sixteen = next(ds[i] for i in range(len(ds)) if ds[i].key.endswith("sixteen_bit.png"))
  assert np.asarray(records.decode(sixteen)).max() == 63 * 1000 * 255 // 65535


def test_format_shortcut_reported(tmp_path):
  make_tree(tmp_path / "src", per_folder=1)
  ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"))
  with open(tmp_path / "out" / "ingest_report.json") as f:
    report = json.load(f)
  audit = report["format_audit"]
  assert audit["real"]["formats"] == {"PNG": 8, "JPEG": 8}
  assert audit["SDXL"]["formats"] == {"PNG": 6}
  assert audit["real"]["jpeg_fraction"] == 0.5
  assert any("'real'" in s and "JPEG" in s for s in report["shortcuts"])
  assert "WARNING format shortcut" in (tmp_path / "out" / "ingest_report.txt").read_text()


def test_workers_then_merge_equals_single_run(tmp_path):
  make_tree(tmp_path / "src")
  single = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "single"), chunk_size=6)
  out = str(tmp_path / "multi")
  for i in (2, 0):
    ingest.run_worker(str(tmp_path / "src"), out, num_workers=3, worker_index=i, chunk_size=6,
                      jobs=1, quiet=True)
  with pytest.raises(SystemExit, match="not done yet"):
    ingest.merge(out, quiet=True)
  ingest.run_worker(str(tmp_path / "src"), out, num_workers=3, worker_index=1, chunk_size=6,
                    jobs=2, quiet=True)
  ingest.merge(out, quiet=True)
  multi = records.Dataset(out)
  assert multi.info["fingerprint"] == single.info["fingerprint"]
  assert list(multi.column("key")) == list(single.column("key"))


def test_changed_source_is_refused(tmp_path):
  make_tree(tmp_path / "src", per_folder=1)
  ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"))
  write(tmp_path / "src" / "SDXL" / "COCO" / "new_p7_i0.png", png_bytes(99))
  with pytest.raises(SystemExit, match="different source"):
    ingest.run_worker(str(tmp_path / "src"), str(tmp_path / "out"), jobs=1, quiet=True)


def test_cli_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    ingest.main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"])
  with pytest.raises(SystemExit):
    ingest.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--layout", "zip"])


def test_sigkill_then_resume_exactly_once(tmp_path):
  """Kills an ingest subprocess mid-way; the rerun finishes with every image exactly once."""
  expected = make_tree(tmp_path / "src", per_folder=6, size=(384, 384))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "data_prep.ingest", "--src", str(tmp_path / "src"), "--out",
         str(out), "--chunk_size", "1", "--jobs", "1", "--quiet"]
  proc = subprocess.Popen(cmd, cwd=ROOT)
  chunks = out / "ingest" / "chunks"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if chunks.exists() and len([f for f in os.listdir(chunks) if f.endswith(".json")]) >= 5:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "ingest finished before it could be killed"
  done = len([f for f in os.listdir(chunks) if f.endswith(".json")])
  assert 5 <= done < len(expected)
  assert not (out / "dataset.json").exists()
  subprocess.run(cmd, cwd=ROOT, check=True)
  ds = records.Dataset(str(out))
  keys = list(ds.column("key"))
  assert len(keys) == len(set(keys)) == len(expected)
  assert set(keys) == expected
  assert ds.verify(deep=True) == []
  reference = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "ref"), chunk_size=1)
  assert ds.info["fingerprint"] == reference.info["fingerprint"]
