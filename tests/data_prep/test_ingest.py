"""Ingest: official tree and parquet layouts, selection rules, bad files, kill and resume, workers."""

import io
import json
import os
import re
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
from tests.data.test_records import png16

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def png_bytes(seed, size=(40, 32), mode="RGB"):
  rng = np.random.default_rng(seed)
  arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).convert(mode).save(buf, "PNG")
  return buf.getvalue()


def jpeg_bytes(seed, size=(40, 32), **kw):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
      buf, "JPEG", **kw)
  return buf.getvalue()


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def make_tree(root, per_folder=3, size=(40, 32)):
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
    assert (rec.width, rec.height) == ((140, 82) if gen == "grok3" else (40, 32))
    assert rec.extra["model_folder"] == gen and rec.group == ""
    assert rec.extra["semantic_folder"] == rel
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
      names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))
                     )[::-1]  # file order differs from filename order
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
  put("tiny.png", png_bytes(3, size=(1, 1)), "warn")  # extreme shape
  put("strip.png", png_bytes(11, size=(400, 32)), "warn")  # aspect ratio 12.5:1
  webp = io.BytesIO()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(webp, "WEBP", lossless=True)
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
  Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(sixteen, "PNG")
  put("sixteen_bit.png", sixteen.getvalue(), "warn")
  put("sixteen_bit_rgb.png", png16(np.random.default_rng(12).integers(0, 65536, (32, 40, 3))),
      "warn")
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
  assert warnings["sixteen_bit_rgb.png"].startswith("16-bit RGB image, reduced to 8 bits")
  assert "clips it" in warnings["sixteen_bit.png"]
  assert warnings["tiny.png"].startswith("extreme shape 1x1 (a side of 1 px < 32 px)")
  assert warnings["strip.png"].startswith("extreme shape 400x32 (aspect ratio 12.5:1 > 10:1)")
  assert not any("extreme shape" in w["warning"] for w in report["warnings"]
                 if os.path.basename(w["path"]) in ("ok.png", "ok.jpg", "ok.webp"))
  # Every ingested record decodes to RGB of its recorded size.
  for i in range(len(ds)):
    rec = ds[i]
    img = records.decode(rec)
    assert img.mode == "RGB" and img.size == (rec.width, rec.height)
  # 16-bit is scaled, not clipped: the brightest pixel stays bright.
  sixteen = next(ds[i] for i in range(len(ds)) if ds[i].key.endswith("sixteen_bit.png"))
  assert np.asarray(records.decode(sixteen)).max() == 1023 * 60 * 255 // 65535


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
  with pytest.raises(SystemExit, match="error: --src .*missing: no such directory"):
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


# --------------------------------------------------------------------------------------------
# The official loader, rewritten from its facts (METHODS.md §0.2), as the reference.
# --------------------------------------------------------------------------------------------

OFFICIAL_MODELS = ("4o", "CogView3_PLUS", "FLUX", "KANDINSKY", "PIXART", "PLAYGROUND_2_5", "SD1_5",
                   "SD2_1", "SD3", "SD3_5", "SDXL", "dalle3", "gemini", "grok3", "hidream",
                   "hunyuan", "ideogram", "infinity", "janus-pro", "kling", "mid-5.2", "mid-6.0",
                   "real")
OFFICIAL_SEMANTIC_FOLDERS = (
    ("cat", "AnimalFace/cat"), ("dog", "AnimalFace/dog"), ("wild", "AnimalFace/wild"),
    ("COCO", "COCO"), ("FFHQ", "HumanFace/FFHQ"), ("celebahq", "HumanFace/celebahq"),
    ("ImageNet-1k", "ImageNet-1k"), ("bedroom", "Scene/bedroom"), ("church", "Scene/church"),
    ("classroom", "Scene/classroom"))


def official_loader(root, cap=2000):
  """The official sample list of a folder tree: [(path below root, label, semantic)].

  It opens root/{model} for its 23 model names (label = position), in each its 10 semantic
  folders, lists each with sorted(os.listdir()), passes over names without the right extension
  (real: png/jpg/jpeg; others: png; lower-cased), stops at `cap` kept files, keeps every real
  file and a generated one when the first re.search(r'_p(\\d+)_i(\\d+)') match has P < 1000 and K
  in 0..1 (0..3 for mid-5.2 and mid-6.0).
  """
  samples = []
  for label, model in enumerate(OFFICIAL_MODELS):
    if not os.path.isdir(os.path.join(root, model)):
      continue
    allowed_k = range(4) if model in ("mid-5.2", "mid-6.0") else range(2)
    extensions = (".png", ".jpg", ".jpeg") if model == "real" else (".png",)
    for semantic, rel in OFFICIAL_SEMANTIC_FOLDERS:
      folder = os.path.join(root, model, rel)
      if not os.path.isdir(folder):
        continue
      taken = 0
      for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(extensions):
          continue
        if taken >= cap:
          break
        match = re.search(r"_p(\d+)_i(\d+)", name)
        if model == "real" or (match and int(match.group(1)) < 1000
                               and int(match.group(2)) in allowed_k):
          samples.append((f"{model}/{rel}/{name}", label, semantic))
          taken += 1
  return samples


# Names the official loader keeps (True) or leaves out (False), per (model folder, semantic folder).
EDGE_TREE = {
    ("SDXL", "AnimalFace/cat"): {
        "x_p20_i0.PNG": True, "x_p21_i0_v2.png": True, "x_p22_i0_p23_i5.png": True,
        "x_p26_i0.png.png": True, "x_p27_i0.jpg.png": True, "x_p28_i0 copy.png": True,
        "x_p0999_i1.png": True, "x_p5_i00.png": True, "x_p6_i01.png": True,
        "x_p1000_i0.png": False, "x_p30_i2.png": False, "x_p31.png": False,
        "x_p32_i0.jpg": False, "x_p33_i0.png.txt": False, "y_i0_p5.png": False,
        "x_p34_i5_p35_i0.png": False},
    ("mid-6.0", "AnimalFace/cat"): {"z_p1_i3.png": True, "z_p1_i4.png": False},
    ("real", "AnimalFace/cat"): {"a.JPG": True, "b.jpeg": True, "c.webp": False, "d.png": True,
                                 "e.PNG": True, "f.jpg.txt": False, "x_p1_i7.png": True},
    ("real", "Scene/bedroom"): {"r1.png": True, "r2.jpg": True},
    ("SD2_1", "Scene/bedroom"): {"s_p2_i0.png": True, "s_p3_i0.png": True},
    ("sd-v2.1", "Scene/bedroom"): {"s_p4_i0.png": False},  # an alias folder: never opened
    ("FLUX2_KLEIN", "COCO"): {"k_p1_i0.png": False},  # a generator the code does not know
    ("Real", "COCO"): {"rr.png": False},  # "real" with a capital: another folder
    # The cap (EDGE_CAP in the tests): names the rules refuse do not count towards it.
    ("SD3", "COCO"): {**{f"c_p{p}_i0.png": p < 22 for p in range(10, 25)},
                      **{f"c_p{p}_i5.png": False for p in range(10, 25, 3)},
                      **{f"c_p{p}_i0.jpg": False for p in range(11, 25, 4)}},
}
EDGE_CAP = 12  # more than any other folder keeps


def make_edge_tree(root):
  """EDGE_TREE on disk, plus files a folders-layout ingest finds but the official loader does not
  (a subfolder of a semantic folder, a semantic folder under another name)."""
  seed = 500
  for (model, rel), names in EDGE_TREE.items():
    for name in names:
      seed += 1
      lower = name.lower()
      data = jpeg_bytes(seed) if lower.endswith((".jpg", ".jpeg")) else png_bytes(seed)
      write(os.path.join(root, model, rel, name), data)
  write(os.path.join(root, "SDXL", "AnimalFace", "cat", "extra", "x_p40_i0.png"), png_bytes(1))
  write(os.path.join(root, "SDXL", "cat", "x_p41_i0.png"), png_bytes(2))


def test_official_selection_edge_cases(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "MAX_PER_FOLDER", EDGE_CAP)
  for (model, _), names in EDGE_TREE.items():
    if model in ("SDXL", "mid-6.0", "real"):
      kept, _ = sources.select_official(list(names)[::-1], model)
      assert kept == sorted(n for n, keep in names.items() if keep), model
  make_edge_tree(str(tmp_path / "src"))
  expected = {path for path, _, _ in official_loader(str(tmp_path / "src"), cap=EDGE_CAP)}
  assert expected == {f"{m}/{r}/{n}" for (m, r), names in EDGE_TREE.items()
                      for n, keep in names.items() if keep}
  make_parquet(str(tmp_path / "hf"), str(tmp_path / "src"))
  for layout, src in (("tree", "src"), ("parquet", "hf")):
    enum = sources.enumerate_source(str(tmp_path / src), layout)
    got = {f"{c.extra['model_folder']}/{c.extra['semantic_folder']}/{c.filename}"
           for c in enum.candidates}
    # Ingest also takes the alias and unknown model folders (they are our data); the official
    # split leaves them out (test_split). In the official folders it keeps exactly what the
    # official loader keeps.
    assert {g for g in got if g.split("/")[0] in OFFICIAL_MODELS} == expected, layout
    assert {"sd-v2.1/Scene/bedroom/s_p4_i0.png", "FLUX2_KLEIN/COCO/k_p1_i0.png",
            "Real/COCO/rr.png"} <= got, layout
    by_name = {c.filename: c for c in enum.candidates}
    # The caption id comes from the first _p{P}_i{K}.
    assert by_name["x_p22_i0_p23_i5.png"].caption_id == "cat/p22"
    assert by_name["x_p0999_i1.png"].caption_id == "cat/p999"
    assert by_name["s_p4_i0.png"].generator == "SD2_1"
  ignored = dict(sources.enumerate_source(str(tmp_path / "src"), "tree").ignored)
  cat = os.path.join(str(tmp_path / "src"), "SDXL", "AnimalFace", "cat")
  assert ignored[os.path.join(cat, "x_p30_i2.png")] == "image index K > 1"
  assert ignored[os.path.join(cat, "x_p32_i0.jpg")] == "generated image without a .png extension"
  assert ignored[os.path.join(str(tmp_path / "src"), "SD3", "COCO", "c_p23_i0.png")] == (
      f"over the {EDGE_CAP}-file cap")


def test_sixteen_bit_rgb_warned_and_decoded(tmp_path):
  rgb = np.random.default_rng(3).integers(0, 65536, (32, 40, 3))
  write(tmp_path / "src" / "cls" / "deep.png", png16(rgb))
  write(tmp_path / "src" / "cls" / "deep_alpha.png",
        png16(np.random.default_rng(4).integers(0, 65536, (32, 40, 4))))
  write(tmp_path / "src" / "cls" / "plain.png", png_bytes(1))
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders")
  with open(tmp_path / "out" / "ingest_report.json") as f:
    warnings = {os.path.basename(w["path"]): w["warning"] for w in json.load(f)["warnings"]}
  assert set(warnings) == {"deep.png", "deep_alpha.png"}
  assert warnings["deep.png"] == ("16-bit RGB image, reduced to 8 bits on decode (PIL keeps the "
                                  "high byte of each value)")
  assert warnings["deep_alpha.png"].endswith("alpha dropped")
  deep = next(ds[i] for i in range(len(ds)) if ds[i].key.endswith("/deep.png"))
  np.testing.assert_array_equal(np.asarray(records.decode(deep)), rgb >> 8)


def test_symlink_loops_are_reported(tmp_path):
  src = tmp_path / "src"
  write(src / "real" / "a.png", png_bytes(1))
  write(src / "real" / "sub" / "b.png", png_bytes(2))
  write(src / "elsewhere" / "c.png", png_bytes(3))
  os.symlink("..", src / "real" / "sub" / "up")  # back to real/: a loop
  os.symlink(str(src / "real"), src / "real" / "sub" / "again")  # absolute, same loop
  os.symlink("selfloop.png", src / "real" / "selfloop.png")  # a file link to itself
  os.symlink("loop_b", src / "real" / "loop_a")  # two links pointing at each other
  os.symlink("loop_a", src / "real" / "loop_b")
  os.symlink(str(src / "elsewhere"), src / "real" / "linked")  # a directory link: followed
  os.symlink("../real/sub", src / "elsewhere" / "back")
  enum = sources.enumerate_source(str(src), "folders")
  # Each label walks every directory it reaches once: real/linked/back is real/sub, walked as such.
  keys = sorted(c.key for c in enum.candidates)
  assert keys == ["elsewhere/back/again/a.png", "elsewhere/back/b.png", "elsewhere/c.png",
                  "real/a.png", "real/linked/c.png", "real/sub/b.png"]
  reasons = {os.path.relpath(p, src): why for p, why in enum.ignored}
  assert reasons["real/sub/up"] == (f"directory symlink loop (it leads back to {src / 'real'}, "
                                    "a folder above it)")
  assert reasons["real/sub/again"].startswith("directory symlink loop")
  assert reasons["real/selfloop.png"] == "symbolic link loop"
  assert reasons["real/loop_a"] == reasons["real/loop_b"] == "symbolic link loop"
  assert reasons["real/linked/back"] == (f"directory reached twice through a symlink (already "
                                         f"walked as {src / 'real' / 'sub'})")
  assert reasons["elsewhere/back/again/linked"].startswith("directory symlink loop")
  # And end to end: the ingest finishes and lists them.
  ingest_dataset(str(src), str(tmp_path / "out"), layout="folders")
  with open(tmp_path / "out" / "ingest_report.json") as f:
    report = json.load(f)
  assert report["left_out_reasons"]["directory symlink loop"] >= 3
  assert "symbolic link loop" in (tmp_path / "out" / "ingest_report.txt").read_text()


def make_grouped(root):
  """Label folders with prompt subfolders, a file directly in a label folder and a stray file."""
  seed = 900
  for label in ("real", "SDXL"):
    for prompt in ("prompt_00", "prompt_01", "prompt_02"):
      for k in range(2):
        seed += 1
        write(os.path.join(root, label, prompt, f"img{k}.png"), png_bytes(seed))
    write(os.path.join(root, label, "prompt_03.png"), png_bytes(seed + 100))
  write(os.path.join(root, "real", "misc", "stray.png"), png_bytes(seed + 200))


def test_group_from_dirname(tmp_path):
  make_grouped(str(tmp_path / "src"))
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders",
                      group_from="dirname")
  groups = dict(zip(ds.column("key"), ds.column("group")))
  assert groups["real/prompt_01/img1.png"] == "prompt_01"
  assert groups["SDXL/prompt_01/img0.png"] == "prompt_01"
  assert groups["SDXL/prompt_03.png"] == "prompt_03"  # directly in the label folder: its stem
  assert groups["real/misc/stray.png"] == "misc"
  assert ds[0].group == groups[ds[0].key]
  with open(tmp_path / "out" / "ingest_report.json") as f:
    assert json.load(f)["groups"]["num_groups"] == 5


def test_group_from_regex_reports_unmatched_files(tmp_path):
  make_grouped(str(tmp_path / "src"))
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders",
                      group_from=r"regex:prompt_(\d+)")
  groups = dict(zip(ds.column("key"), ds.column("group")))
  assert groups["real/prompt_02/img0.png"] == "02" and groups["real/prompt_03.png"] == "03"
  assert "real/misc/stray.png" not in groups
  with open(tmp_path / "out" / "ingest_report.json") as f:
    report = json.load(f)
  stray = [i for i in report["ignored"] if i["path"].endswith("stray.png")]
  assert stray and stray[0]["reason"].startswith(r"no group: --group_from regex:prompt_(\d+)")
  # The whole match when the pattern has no group.
  ds = ingest_dataset(str(tmp_path / "src"), str(tmp_path / "whole"), layout="folders",
                      group_from=r"regex:prompt_\d+")
  assert set(ds.column("group")) == {f"prompt_0{i}" for i in range(4)}


def test_other_group_from_on_resume_is_refused(tmp_path):
  make_grouped(str(tmp_path / "src"))
  ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders",
                 group_from="dirname")
  with pytest.raises(SystemExit, match="group_from differs"):
    ingest.run_worker(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders", jobs=1,
                      quiet=True, group_from=r"regex:prompt_(\d+)")
  with pytest.raises(SystemExit, match="group_from differs"):
    ingest.run_worker(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders", jobs=1,
                      quiet=True)
  with open(tmp_path / "out" / "ingest" / "plan.json") as f:
    assert json.load(f)["group_from"] == "dirname"


def test_group_from_user_errors(tmp_path):
  make_tree(tmp_path / "tree", per_folder=1)
  make_grouped(str(tmp_path / "folders"))
  for args, message in (
      (["--src", str(tmp_path / "tree"), "--group_from", "dirname"],
       "--group_from applies to --layout folders, but --src .* is read as layout tree"),
      (["--src", str(tmp_path / "folders"), "--group_from", "regex:("],
       r"--group_from regex:\(: not a valid regular expression"),
      (["--src", str(tmp_path / "folders"), "--group_from", "folder"],
       "--group_from must be dirname or regex:PATTERN"),
  ):
    with pytest.raises(SystemExit, match=message):
      ingest.main([*args, "--out", str(tmp_path / "out"), "--quiet"])
    assert not (tmp_path / "out").exists()


def test_size_shortcut_flagged(tmp_path):
  for k in range(10):
    write(tmp_path / "src" / "a" / f"big{k}.png", png_bytes(k, size=(64, 48)))
    write(tmp_path / "src" / "a" / f"small{k}.png", png_bytes(100 + k))
    write(tmp_path / "src" / "b" / f"small{k}.png", png_bytes(200 + k))
    write(tmp_path / "src" / "b" / f"more{k}.png", png_bytes(300 + k))
  ingest_dataset(str(tmp_path / "src"), str(tmp_path / "out"), layout="folders")
  with open(tmp_path / "out" / "ingest_report.json") as f:
    report = json.load(f)
  audit = report["size_audit"]
  assert [(g["format"], g["width"], g["height"], g["count"]) for g in audit["flagged"]] == [
      ("PNG", 64, 48, 10)]
  assert audit["flagged"][0]["distance"] == pytest.approx(1.0)
  assert audit["metadata_accuracy"] == pytest.approx(0.75)
  assert audit["majority_rate"] == pytest.approx(0.5)
  assert "total-variation" in audit["rule"]
  text = (tmp_path / "out" / "ingest_report.txt").read_text()
  assert "WARNING size shortcut: PNG 64x48: 10 records (25%), a 100%" in text


def _descendants(pid):
  """Live (not zombie) processes below `pid`, read from /proc."""
  parents = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if fields[0] != "Z":
      parents[int(entry)] = int(fields[1])
  found, frontier = set(), {pid}
  while frontier:
    frontier = {p for p, parent in parents.items() if parent in frontier} - found
    found |= frontier
  return found


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_killed_ingest_leaves_no_workers(tmp_path):
  """SIGKILL of an ingest: its decode processes exit within seconds rather than linger."""
  make_tree(tmp_path / "src", per_folder=4, size=(256, 256))
  out = tmp_path / "out"
  proc = subprocess.Popen([sys.executable, "-m", "data_prep.ingest", "--src", str(tmp_path / "src"),
                           "--out", str(out), "--chunk_size", "2", "--jobs", "2", "--quiet"],
                          cwd=ROOT)
  workers = set()
  try:
    deadline = time.time() + 120
    chunks = out / "ingest" / "chunks"
    while time.time() < deadline and proc.poll() is None:
      workers = _descendants(proc.pid)
      if len(workers) >= 2 and chunks.exists() and any(
          f.endswith(".json") for f in os.listdir(chunks)):
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    workers = _descendants(proc.pid)
    assert len(workers) >= 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in workers):
      time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "decode workers outlived their killed parent"
  finally:
    if proc.poll() is None:
      proc.kill()
    for p in workers:
      if _alive(p):
        os.kill(p, signal.SIGKILL)


def test_launch_script_passes_ingest_flags_to_every_worker(tmp_path):
  """launch/ingest_local.sh: N worker processes, INGEST_FLAGS (here --group_from) reach each."""
  src, out = tmp_path / "src", tmp_path / "out"
  for label in ("real", "SDXL"):
    for group in ("p0", "p1", "p2"):
      write(str(src / label / group / "a.png"), png_bytes(hash((label, group)) % 1000))
  env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=ROOT,
             INGEST_FLAGS="--layout folders --group_from dirname --chunk_size 2")
  done = subprocess.run(["bash", os.path.join(ROOT, "launch", "ingest_local.sh"), str(src),
                         str(out), "2"], env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  ds = records.Dataset(str(out))
  assert len(ds) == 6 and len(ds.info["shards"]) == 3
  assert sorted(ds.column("group")) == ["p0", "p0", "p1", "p1", "p2", "p2"]
