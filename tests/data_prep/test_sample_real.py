"""sample_real: every source layout, deterministic selection, ImageNet and COCO metadata, bad files,
resume, workers, demographic balancing and the errors a user can cause, on tiny fake sources."""

import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep import sample_real
from iab_jax.data import records

WNIDS = ("n01440764", "n02123045", "n09999999")  # tench, tabby cat, and one the CSV lacks


def image_bytes(seed, fmt="JPEG", size=(8, 6)):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
  return buf.getvalue()


def write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def write_all(files, reverse=False):
  """Writes {path: bytes}; reverse creates them in the opposite order (another listing order)."""
  for path in sorted(files, reverse=reverse):
    write(path, files[path])


def afhq_files(root, per_split=3):
  files, seed = {}, 0
  for split in ("train", "val"):
    for semantic in ("cat", "dog", "wild"):
      for i in range(per_split):
        seed += 1
        name = f"flickr_{semantic}_{split}{i:04d}.jpg"
        files[os.path.join(root, "afhq", split, semantic, name)] = image_bytes(seed)
  files[os.path.join(root, "afhq", "train", "cat", "Thumbs.db")] = b"not an image"
  return files


def celebahq_files(root, n=4):
  files = {os.path.join(root, "CelebA-HQ-img", f"{i}.jpg"): image_bytes(100 + i) for i in range(n)}
  # CelebAMask-HQ's masks are PNGs beside the photos; they must never be sampled.
  files[os.path.join(root, "CelebAMask-HQ-mask-anno", "0", "00000_hair.png")] = image_bytes(
      99, "PNG")
  return files


def ffhq_files(root, n=4):
  files = {}
  for i in range(n):
    folder = f"{(i // 2) * 1000:05d}"
    files[os.path.join(root, "images1024x1024", folder, f"{i:05d}.png")] = image_bytes(
        200 + i, "PNG")
  files[os.path.join(root, "images1024x1024", "LICENSE.txt")] = b"licence"
  files[os.path.join(root, "thumbnails128x128", "00000", "00000.png")] = image_bytes(299, "PNG")
  return files


def lsun_folder_files(root, n=3):
  files = {}
  for k, name in enumerate(("bedroom", "church_outdoor", "classroom")):
    for i in range(n):
      files[os.path.join(root, name, f"{name}_{i:03d}.webp")] = image_bytes(300 + 10 * k + i,
                                                                            "WEBP")
  return files


def imagenet_files(root, train=3, val=1):
  files, seed = {}, 400
  for wnid in WNIDS:
    for i in range(train):
      seed += 1
      files[os.path.join(root, "train", wnid, f"{wnid}_{i}.JPEG")] = image_bytes(seed)
    for i in range(val):
      seed += 1
      files[os.path.join(root, "val", wnid, f"ILSVRC2012_val_{seed:08d}.JPEG")] = image_bytes(seed)
  return files


def coco_files(root):
  """Four train and two val images; train 3 has no caption. Returns (files, expected captions)."""
  files, expected, annotations = {}, {}, {}
  for split, ids in (("train2017", (1, 2, 3, 4)), ("val2017", (7, 8))):
    images, anns = [], []
    for image_id in ids:
      name = f"{image_id:012d}.jpg"
      files[os.path.join(root, split, name)] = image_bytes(500 + image_id)
      images.append({"id": image_id, "file_name": name})
      if image_id != 3:
        # Annotation ids out of order: the lowest one's caption is the one kept.
        anns += [{"id": 100 * image_id + 9, "image_id": image_id, "caption": "later caption"},
                 {"id": 100 * image_id + 2, "image_id": image_id,
                  "caption": f" first caption of {image_id}\n"}]
        expected[f"{split}/{name}"] = f"first caption of {image_id}"
    annotations[split] = {"images": images, "annotations": anns}
  for split, data in annotations.items():
    files[os.path.join(root, "annotations", f"captions_{split}.json")] = json.dumps(data).encode()
  return files, expected


def make_sources(base, reverse=False):
  """Every source under base/{name}; returns (source flags, COCO captions)."""
  coco, captions = coco_files(os.path.join(base, "coco"))
  makers = {"afhq_root": afhq_files, "celeba": celebahq_files, "ffhq": ffhq_files,
            "lsun": lsun_folder_files, "imagenet": imagenet_files}
  for name, make in makers.items():
    write_all(make(os.path.join(base, name)), reverse)
  write_all(coco, reverse)
  flags = ["--afhq", "afhq_root", "--celebahq", "celeba", "--ffhq", "ffhq", "--lsun", "lsun",
           "--imagenet", "imagenet", "--coco", "coco"]
  return [f if f.startswith("--") else os.path.join(base, f) for f in flags], captions


SMALL = ["--count", "cat=2", "dog=3", "wild=6", "celebahq=3", "FFHQ=2", "bedroom=2", "church=1",
         "classroom=3", "ImageNet-1k=6", "COCO=5"]


def run(out, *args):
  assert sample_real.main(["--out", str(out), "--jobs", "1", "--quiet", *args]) == 0
  return records.Dataset(str(out))


def read_json(path):
  with open(path) as f:
    return json.load(f)


def source_bytes(base, rel_root, source_path):
  with open(os.path.join(base, rel_root, source_path), "rb") as f:
    return f.read()


def test_every_layout_metadata_and_bytes(tmp_path):
  flags, coco_captions = make_sources(str(tmp_path / "src"))
  ds = run(tmp_path / "out", *flags, *SMALL)
  assert ds.classes == ["real"]
  counts = {"cat": 2, "dog": 3, "wild": 6, "celebahq": 3, "FFHQ": 2, "bedroom": 2, "church": 1,
            "classroom": 3, "ImageNet-1k": 6, "COCO": 5}
  assert ds.info["counts"] == {"real": counts}
  roots = {"cat": "afhq_root", "dog": "afhq_root", "wild": "afhq_root", "celebahq": "celeba",
           "FFHQ": "ffhq", "bedroom": "lsun", "church": "lsun", "classroom": "lsun",
           "ImageNet-1k": "imagenet", "COCO": "coco"}
  by_class = {}
  for i in range(len(ds)):
    rec = ds[i]
    by_class.setdefault(rec.semantic, []).append(rec)
    folder, dataset = sample_real.generators.SEMANTICS[rec.semantic]
    assert rec.key == f"real/{folder}/{rec.filename}"
    assert (rec.generator, rec.label, rec.levels, rec.source) == ("real", 0, (1, 2, 5, 22), dataset)
    source_path = rec.extra["source_path"]
    assert os.path.basename(source_path) == rec.filename
    assert rec.image == source_bytes(tmp_path / "src", roots[rec.semantic], source_path)
    assert rec.sha256 == records.sha256_bytes(rec.image)
    assert rec.caption == coco_captions.get(source_path, "")
  # AFHQ samples the union of train and val: 6 of 6 wild images.
  assert sorted(r.extra["source_path"] for r in by_class["wild"]) == sorted(
      f"afhq/{s}/wild/flickr_wild_{s}{i:04d}.jpg" for s in ("train", "val") for i in range(3))
  assert all(r.extra["source_path"].startswith("CelebA-HQ-img/") for r in by_class["celebahq"])
  assert all(r.extra["source_path"].startswith("images1024x1024/") for r in by_class["FFHQ"])
  assert {r.format for r in by_class["bedroom"]} == {"WEBP"}
  # ImageNet-1k: 2 per wnid; the words from the authors' caption file (no LOC_synset_mapping.txt).
  wnids = [r.extra["wnid"] for r in by_class["ImageNet-1k"]]
  assert sorted(wnids) == sorted(WNIDS * 2)
  labels = {r.extra["wnid"]: r.extra["label"] for r in by_class["ImageNet-1k"]}
  assert labels == {"n01440764": "tench, Tinca tinca", "n02123045": "tabby, tabby cat",
                    "n09999999": ""}
  # COCO: 5 eligible (one image lacks a caption), each with its lowest-id caption.
  assert sorted(r.caption for r in by_class["COCO"]) == sorted(coco_captions.values())
  selection = read_json(tmp_path / "out" / "sample_real.json")
  assert selection["classes"]["COCO"]["left_out"] == {"no caption in the annotations": 1}
  assert selection["classes"]["celebahq"]["eligible"] == 4
  assert selection["classes"]["ImageNet-1k"]["per_group"] == {w: 2 for w in WNIDS}
  report = read_json(tmp_path / "out" / "ingest_report.json")
  assert report["targets"]["cat"] == {"target": 2, "written": 2}
  assert report["files_skipped"] == 0


def test_imagenet_words_from_synset_mapping(tmp_path):
  write_all(imagenet_files(str(tmp_path / "in"), train=2, val=0))
  write(str(tmp_path / "in" / "LOC_synset_mapping.txt"),
        "\n".join(f"{w} words of {w}" for w in WNIDS).encode())
  plan, candidates = sample_real.build_selection({"imagenet": str(tmp_path / "in")},
                                                 sample_real.parse_counts([]), 0, quiet=True)
  # The default 2000 cannot be met by 6 files: every file is taken, none twice.
  assert len(candidates) == len({c.key for c in candidates}) == 6
  assert {c.extra["label"] for c in candidates} == {f"words of {w}" for w in WNIDS}
  assert plan["counts"] == {"ImageNet-1k": 2000}


@pytest.fixture
def lmdb_lsun(tmp_path):
  """An LSUN root with LMDB exports: bedroom train (one value corrupt) + val (one key in both),
  church train."""
  lmdb = pytest.importorskip("lmdb")
  root = tmp_path / "lsun"
  values = {}
  for database, keys in (("bedroom_train_lmdb", ["aa01", "aa02", "aa03", "dup"]),
                         ("bedroom_val_lmdb", ["bb01", "dup"]),
                         ("church_outdoor_train_lmdb", ["cc01", "cc02", "cc03"])):
    (root / database).mkdir(parents=True)
    env = lmdb.open(str(root / database), map_size=1 << 22)
    with env.begin(write=True) as txn:
      if database == "bedroom_train_lmdb":
        txn.put(b"zz_bad", b"RIFF\x10\x00\x00\x00WEBPVP8 garbage")
      for i, key in enumerate(keys):
        fmt = "JPEG" if key == "aa02" else "WEBP"
        values[f"{database}/{key}"] = image_bytes(600 + 10 * len(values) + i, fmt)
        txn.put(key.encode(), values[f"{database}/{key}"])
    env.close()
  write_all(lsun_folder_files(str(root)))  # folders beside LMDB exports are ignored
  return str(root), values


def test_lsun_lmdb(tmp_path, lmdb_lsun):
  root, values = lmdb_lsun
  ds = run(tmp_path / "out", "--lsun", root, "--count", "bedroom=10", "church=2", "classroom=1")
  recs = {ds[i].extra["source_path"]: ds[i] for i in range(len(ds))}
  assert {k for k in recs if k.startswith("bedroom")} == {
      k for k in values if k.startswith("bedroom")}
  report = read_json(tmp_path / "out" / "ingest_report.json")
  assert [s["path"] for s in report["skipped"]] == [
      os.path.join(root, "bedroom_train_lmdb") + "#zz_bad"]
  assert report["skipped"][0]["key"] == "real/Scene/bedroom/zz_bad.webp"
  assert report["targets"]["bedroom"] == {"target": 10, "written": 6}
  assert sum(k.startswith("church_outdoor_train_lmdb/") for k in recs) == 2
  for source_path, rec in recs.items():
    if "lmdb" in source_path:
      assert rec.image == values[source_path]
  names = {r.filename for r in recs.values() if r.semantic == "bedroom"}
  # Named {key}.{format}; the key in both databases gets its source path as its name.
  assert names == {"aa01.webp", "aa02.jpg", "aa03.webp", "bb01.webp",
                   "bedroom_train_lmdb_dup.webp", "bedroom_val_lmdb_dup.webp"}
  assert recs["bedroom_train_lmdb/aa02"].format == "JPEG"
  # classroom has no LMDB export, so its image folder is used.
  assert [r.filename for r in recs.values() if r.semantic == "classroom"] == ["classroom_001.webp"]


def test_lsun_lmdb_needs_the_package(tmp_path, lmdb_lsun, monkeypatch):
  monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb now fails
  with pytest.raises(SystemExit, match="needs the lmdb package"):
    run(tmp_path / "out", "--lsun", lmdb_lsun[0], "--count", "classroom=0")


def chosen(tmp_path, base, *args):
  flags, _ = make_sources(str(tmp_path / base), reverse=base.endswith("reversed"))
  plan, _ = sample_real.build_selection(
      {flags[i][2:]: flags[i + 1] for i in range(0, len(flags), 2)},
      sample_real.parse_counts(list(args)), 0, quiet=True)
  return {s: entry["chosen"] for s, entry in plan["classes"].items()}


def test_selection_is_deterministic(tmp_path):
  a = chosen(tmp_path, "a", "cat=2", "wild=3", "ImageNet-1k=3")
  b = chosen(tmp_path, "b_reversed", "cat=2", "wild=3", "ImageNet-1k=3")
  assert a == b and len(a["wild"]) == 3 and len(a["ImageNet-1k"]) == 3
  # The same ranking on a fixed list, on any machine (a change here changes every rebuild).
  files = [sample_real.Eligible(f"x/{i:02d}.jpg", "", f"{i:02d}.jpg") for i in range(20)]
  picked, _ = sample_real.select(files, 4, 0, "cat")
  assert [f.rel for f in picked] == GOLDEN
  other, _ = sample_real.select(files, 4, 1, "cat")
  assert [f.rel for f in other] != GOLDEN
  # A larger count keeps the smaller count's choice.
  more, _ = sample_real.select(files, 9, 0, "cat")
  assert set(GOLDEN) < {f.rel for f in more}
  assert sample_real.select(files, 4, 0, "dog")[0] != picked


GOLDEN = ["x/00.jpg", "x/02.jpg", "x/14.jpg", "x/18.jpg"]


def test_allocate_is_as_equal_as_sizes_allow():
  assert sample_real.allocate({"A": 6, "B": 2, "C": 4}, 6) == {"A": 2, "B": 2, "C": 2}
  assert sample_real.allocate({"A": 6, "B": 2, "C": 4}, 9) == {"A": 4, "B": 2, "C": 3}
  assert sample_real.allocate({"A": 6, "B": 2, "C": 4}, 50) == {"A": 6, "B": 2, "C": 4}
  assert sample_real.allocate({"x": 5, "y": 5}, 3) == {"x": 1, "y": 2}


def test_balance_equalises_groups(tmp_path):
  write_all(celebahq_files(str(tmp_path / "celeba"), n=12))
  groups = ["Female/East Asian"] * 6 + ["Male/Black"] * 2 + ["Female/White"] * 3
  rows = ["path,group"] + [f"CelebA-HQ-img/{i}.jpg,{g}" for i, g in enumerate(groups)]
  rows += ["CelebA-HQ-img/0.jpg,Male/White", "CelebA-HQ-img/11.jpg,"]  # reported and skipped
  (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
  ds = run(tmp_path / "out", "--celebahq", str(tmp_path / "celeba"), "--count", "celebahq=8",
           "--balance", str(tmp_path / "groups.csv"))
  taken = [ds[i].extra["group"] for i in range(len(ds))]
  assert {g: taken.count(g) for g in set(taken)} == {
      "Male/Black": 2, "Female/White": 3, "Female/East Asian": 3}
  entry = read_json(tmp_path / "out" / "sample_real.json")["classes"]["celebahq"]
  assert entry["balanced"] and entry["eligible"] == 11  # 11.jpg has no group: not eligible
  assert entry["left_out"] == {"not in the --balance CSV": 1}


def test_corrupt_files_reported_and_skipped(tmp_path):
  files = afhq_files(str(tmp_path / "afhq"), per_split=2)
  bad = str(tmp_path / "afhq" / "afhq" / "val" / "dog" / "flickr_dog_val0001.jpg")
  files[bad] = files[bad][:len(files[bad]) // 2]
  write_all(files)
  ds = run(tmp_path / "out", "--afhq", str(tmp_path / "afhq"), "--count", "cat=4", "dog=4",
           "wild=0")
  report = read_json(tmp_path / "out" / "ingest_report.json")
  assert [s["path"] for s in report["skipped"]] == [bad]
  assert "truncated" in report["skipped"][0]["reason"].lower()
  assert report["targets"] == {"cat": {"target": 4, "written": 4},
                               "dog": {"target": 4, "written": 3}}
  assert len(ds) == 7
  assert "dog: 4 -> 3 (1 short)" in (tmp_path / "out" / "ingest_report.txt").read_text()


def test_rerun_resumes_and_finished_rerun_is_a_no_op(tmp_path):
  flags, _ = make_sources(str(tmp_path / "src"))
  args = [*flags, *SMALL, "--chunk_size", "4"]
  first = run(tmp_path / "out", *args)
  shards = sorted((tmp_path / "out" / "records").iterdir())
  stamps = [s.stat().st_mtime_ns for s in shards]
  again = run(tmp_path / "out", *args)
  assert [s.stat().st_mtime_ns for s in shards] == stamps
  assert again.info["fingerprint"] == first.info["fingerprint"]
  # A worker killed inside chunk 2: no chunk JSON yet, a partial temporary shard.
  os.remove(tmp_path / "out" / "ingest" / "chunks" / "chunk-000002.json")
  os.rename(shards[2], str(shards[2]) + ".tmp")
  os.remove(tmp_path / "out" / "dataset.json")
  resumed = run(tmp_path / "out", *args)
  assert resumed.info["fingerprint"] == first.info["fingerprint"]
  assert [s.stat().st_mtime_ns for i, s in enumerate(shards) if i != 2] == stamps[:2] + stamps[3:]
  assert resumed.verify(deep=True) == []


def test_two_workers_then_merge_equal_one(tmp_path):
  flags, _ = make_sources(str(tmp_path / "src"))
  args = [*flags, *SMALL, "--chunk_size", "5"]
  single = run(tmp_path / "single", *args)
  out = str(tmp_path / "multi")
  for worker in ("1", "0"):
    sample_real.main(["--out", out, "--jobs", "1", "--quiet", *args, "--num_workers", "2",
                      "--worker_index", worker])
  assert not os.path.exists(os.path.join(out, "dataset.json"))
  assert sample_real.main(["--out", out, "--merge", "--quiet"]) == 0
  multi = records.Dataset(out)
  assert multi.info["fingerprint"] == single.info["fingerprint"]
  assert list(multi.column("key")) == list(single.column("key"))
  assert read_json(os.path.join(out, "ingest_report.json"))["targets"]["COCO"]["written"] == 5


def test_changed_source_or_seed_is_refused(tmp_path):
  write_all(afhq_files(str(tmp_path / "afhq")))
  args = ["--afhq", str(tmp_path / "afhq"), "--count", "cat=2", "dog=2", "wild=2"]
  run(tmp_path / "out", *args)
  with pytest.raises(SystemExit, match="seed: stored 0, now 3"):
    run(tmp_path / "out", *args, "--seed", "3")
  write(str(tmp_path / "afhq" / "afhq" / "val" / "wild" / "new.jpg"), image_bytes(9))
  with pytest.raises(SystemExit, match="class wild, eligible: stored 6, now 7"):
    run(tmp_path / "out", *args)


def test_dry_run_writes_nothing(tmp_path, capsys):
  write_all(afhq_files(str(tmp_path / "afhq")))
  assert sample_real.main(["--out", str(tmp_path / "out"), "--afhq", str(tmp_path / "afhq"),
                           "--count", "cat=2", "--dry_run"]) == 0
  printed = capsys.readouterr().out
  assert "skipping COCO (no --coco)" in printed
  assert "cat: 2 chosen of 2 wanted, from 6 eligible (--afhq)" in printed
  assert "left out: 1 not an image file name" in printed
  assert not (tmp_path / "out").exists()


def test_user_errors(tmp_path):
  with pytest.raises(SystemExit, match="--ffhq .*missing is not a directory; expected "
                                       "images1024x1024"):
    run(tmp_path / "out", "--ffhq", str(tmp_path / "missing"))
  with pytest.raises(SystemExit):  # no source at all
    run(tmp_path / "out")
  with pytest.raises(SystemExit):
    run(tmp_path / "out", "--ffhq", str(tmp_path), "--count", "horses=3")
  (tmp_path / "empty" / "afhq" / "train").mkdir(parents=True)
  with pytest.raises(SystemExit, match="found no cat images under --afhq"):
    run(tmp_path / "out", "--afhq", str(tmp_path / "empty"))
  with pytest.raises(SystemExit, match="has neither train2017/ nor val2017/"):
    run(tmp_path / "out", "--coco", str(tmp_path / "empty"))
  with pytest.raises(SystemExit, match="no sample_real.json"):
    run(tmp_path / "nothing", "--merge")
  with pytest.raises(SystemExit, match="--balance .* is not a file"):
    run(tmp_path / "out", "--ffhq", str(tmp_path), "--balance", str(tmp_path / "none.csv"))
