"""Tests of the TFDS builder: splits, order, bytes, pixels, labels and metadata against our data.

A 30-record dataset (3 generators x 2 semantic classes, PNG and JPEG, 16-bit, RGBA, palette and
grayscale files, one cropped record) with standard, semantic, official and open-set manifests is
built into a temporary TFDS data_dir and read back through `as_data_source`, `tfds.data_source`
and, in a subprocess so that TensorFlow stays out of this one, `tfds.load`.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds

from data_prep import split
from iab_jax.data import generators as gen_lib
from iab_jax.data import manifests
from iab_jax.data import records
from iab_jax.data import tfds_builder as tb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GENERATORS = ("SDXL", "FLUX", "real")
SEMANTICS = ("cat", "bedroom")
PER_FOLDER = 5
CROP = (0, 0, 6, 5)


def _encode(pixels, fmt, mode=None):
  buf = io.BytesIO()
  Image.fromarray(pixels, mode).save(buf, fmt)
  return buf.getvalue()


def _image(rng, generator, semantic, k):
  """File bytes: RGB PNG for generators, RGB JPEG for real, and a few files in other modes."""
  rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
  odd = {("SDXL", "cat", 0): lambda: _encode(rng.integers(0, 65536, (8, 10), dtype=np.uint16),
                                             "PNG"),  # 16-bit grayscale
         ("SDXL", "cat", 1): lambda: _encode(rng.integers(0, 256, (8, 10, 4), dtype=np.uint8),
                                             "PNG"),  # RGBA
         ("FLUX", "cat", 0): lambda: _encode(rng.integers(0, 4, (8, 10), dtype=np.uint8), "PNG",
                                             "P"),  # palette
         ("real", "cat", 0): lambda: _encode(rgb[..., 0], "JPEG")}  # grayscale JPEG
  make = odd.get((generator, semantic, k))
  if make:
    return make()
  return _encode(rgb, "JPEG" if generator == "real" else "PNG")


def _make_dataset(root, seed):
  """Writes the test dataset (images drawn with `seed`) and its manifests; returns it."""
  rng = np.random.default_rng(seed)
  classes = gen_lib.class_order(GENERATORS)
  recs = []
  for generator in GENERATORS:
    for semantic in SEMANTICS:
      for k in range(PER_FOLDER):
        data = _image(rng, generator, semantic, k)
        with Image.open(io.BytesIO(data)) as img:
          width, height, fmt = img.width, img.height, img.format
        recs.append(records.ImageRecord(
            image=data, key=f"{generator}/{semantic}/{k}", generator=generator,
            label=classes.index(generator), levels=gen_lib.family_levels(generator),
            semantic=semantic, source="test", width=width, height=height, format=fmt,
            sha256=records.sha256_bytes(data), caption_id=f"{semantic}/p{k}",
            caption=f"a {semantic}, n°{k} 猫", filename=f"img_p{k}_i0.png",
            crop=CROP if (generator, semantic, k) == ("FLUX", "bedroom", 0) else None,
            extra={"seed": k}))
  records.write_dataset(str(root), recs, classes, records_per_shard=7)
  ds = records.Dataset(str(root))
  for made in (split.standard_split(ds), split.semantic_split(ds, "cat"),
               split.standard_split(ds, official=True), split.openset_split(ds, 0, num_folds=2)):
    manifests.save_manifest(made, os.path.join(str(root), manifests.SPLITS_DIR,
                                               made["name"] + ".json"))
  return ds


def _manifest(ds, name):
  return manifests.load_manifest(os.path.join(ds.root, manifests.SPLITS_DIR, name + ".json"), ds)


def _prepare_kwargs(root):
  return {"download_config": tfds.download.DownloadConfig(manual_dir=str(root))}


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def _plain(value):
  """A data_source value as JSON gives it back: text as str, arrays as lists."""
  return _text(value) if isinstance(value, (bytes, str)) else np.asarray(value).tolist()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  return _make_dataset(tmp_path_factory.mktemp("bench"), seed=0)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def standard(bench, tfds_dir):
  builder = tb.ImageAttributionBench(config="standard", data_dir=tfds_dir)
  builder.download_and_prepare(**_prepare_kwargs(bench.root))
  return builder


def test_configs_are_the_common_manifests_and_any_other_name(tfds_dir):
  names = [c.name for c in tb.ImageAttributionBench.BUILDER_CONFIGS]
  assert names == ["standard", "semantic_cat", "semantic_bedroom", "semantic_FFHQ"]
  assert tfds.builder(tb.NAME, data_dir=tfds_dir).builder_config.name == "standard"
  other = tfds.builder(f"{tb.NAME}/openset_fold3", data_dir=tfds_dir)
  assert other.builder_config.name == "openset_fold3"
  assert other.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def test_splits_hold_the_manifest_records_in_its_order(bench, standard):
  manifest = _manifest(bench, "standard")
  assert set(standard.info.splits) == set(manifest.splits) == {"train", "val", "test"}
  keys = bench.column("key").astype(str)
  for name, positions in manifest.splits.items():
    assert standard.info.splits[name].num_examples == len(positions)
    source = standard.as_data_source(name)
    got = [source[i] for i in range(len(source))]
    np.testing.assert_array_equal([ex["position"] for ex in got], positions)
    assert [_text(ex["key"]) for ex in got] == keys[positions].tolist()


def test_image_bytes_are_the_original_files(bench, standard):
  formats = set()
  for name in standard.info.splits:
    source = standard.as_data_source(name, decoders={"image": tfds.decode.SkipDecoding()})
    for i in range(len(source)):
      ex = source[i]
      record = bench[ex["position"]]
      assert ex["image"] == record.image  # bit for bit, never re-encoded
      formats.add(record.format)
  assert formats == {"PNG", "JPEG"}


def test_decoded_images_equal_records_decode_in_every_mode(bench, standard):
  modes = set()
  for name in standard.info.splits:
    source = standard.as_data_source(name)
    for i in range(len(source)):
      ex = source[i]
      record = bench[ex["position"]]
      with Image.open(io.BytesIO(record.image)) as img:
        modes.add(img.mode)
      image = ex["image"]
      assert image.dtype == np.uint8 and image.shape == (record.height, record.width, 3)
      if ex["crop"][0] >= 0:  # records.decode crops; the feature keeps the whole file
        left, top, right, bottom = ex["crop"]
        image = image[top:bottom, left:right]
      np.testing.assert_array_equal(image, np.asarray(records.decode(record)), err_msg=record.key)
  assert {"RGB", "RGBA", "P", "L", "I;16"} <= modes


def test_labels_fields_and_metadata_round_trip(bench, standard, tfds_dir):
  manifest = _manifest(bench, "standard")
  labels = manifests.labels_for(manifest, bench)
  assert standard.info.features["label"].names == manifest.classes == ["FLUX", "SDXL", "real"]
  seen_crop = False
  for name in manifest.splits:
    source = standard.as_data_source(name)
    for i in range(len(source)):
      ex = source[i]
      record = bench[ex["position"]]
      assert ex["label"] == labels[ex["position"]] == manifest.classes.index(record.generator)
      for field in tb.TEXT_FIELDS:
        assert _text(ex[field]) == getattr(record, field), field
      assert (ex["width"], ex["height"]) == (record.width, record.height)
      np.testing.assert_array_equal(ex["levels"], record.levels)
      np.testing.assert_array_equal(ex["crop"], record.crop or tb.NO_CROP)
      assert json.loads(_text(ex["extra"])) == record.extra
      seen_crop |= record.crop is not None
  assert seen_crop
  meta = standard.info.metadata
  assert meta["dataset_fingerprint"] == bench.info["fingerprint"]
  assert meta["manifest_digest"] == manifest.digest and meta["manifest_name"] == "standard"
  assert meta["skipped"] == {"train": [], "val": [], "test": []}

  # Without the manual dir, labels and metadata come back from the prepared files.
  reopened = tb.ImageAttributionBench(config="standard", data_dir=tfds_dir)
  assert reopened.info.features["label"].names == manifest.classes
  assert reopened.info.metadata["manifest_digest"] == manifest.digest


def test_data_source_by_name_builds_any_manifest(bench, tfds_dir):
  official = _manifest(bench, "standard_official")
  sources = tfds.data_source(f"{tb.NAME}/standard_official", data_dir=tfds_dir,
                             download_and_prepare_kwargs=_prepare_kwargs(bench.root))
  assert set(sources) == set(official.splits)
  for name, positions in official.splits.items():
    assert np.any(np.diff(positions) < 0)  # the official order is shuffled: order is tested
    got = [sources[name][i]["position"] for i in range(len(sources[name]))]
    np.testing.assert_array_equal(got, positions)

  openset = _manifest(bench, "openset_fold0")
  source = tfds.data_source(f"{tb.NAME}/openset_fold0", data_dir=tfds_dir, split="test_unknown",
                            download_and_prepare_kwargs=_prepare_kwargs(bench.root))
  assert len(source) == len(openset.splits["test_unknown"]) > 0
  assert {int(source[i]["label"]) for i in range(len(source))} == {-1}  # unknown generators
  builder = tfds.builder(f"{tb.NAME}/openset_fold0", data_dir=tfds_dir)
  assert builder.info.features["label"].names == openset.classes


_LOAD_SCRIPT = """
import json, sys
import numpy as np
import tensorflow_datasets as tfds
import iab_jax.data.tfds_builder as tb

def plain(value):
  value = value.numpy() if hasattr(value, "numpy") else value
  if isinstance(value, bytes):
    return value.decode()
  return value.tolist()

data_dir, out = sys.argv[1], sys.argv[2]
name, skip = tb.NAME + "/standard", {"image": tfds.decode.SkipDecoding()}
source = tfds.data_source(name, data_dir=data_dir, split="train", download=False)
files = tfds.data_source(name, data_dir=data_dir, split="train", download=False, decoders=skip)
expected = [source[i]["image"] for i in range(len(source))]
tf_free = "tensorflow" not in sys.modules
rows, same_pixels = [], []
for ex in tfds.load(name, data_dir=data_dir, split="train", download=False):
  rows.append({k: plain(v) for k, v in ex.items() if k != "image"})
  same_pixels.append(bool(np.array_equal(ex["image"].numpy(), expected[len(rows) - 1])))
same_bytes = [ex["image"].numpy() == files[i]["image"] for i, ex in enumerate(
    tfds.load(name, data_dir=data_dir, split="train", download=False, decoders=skip))]
json.dump({"tf_free": tf_free, "rows": rows, "same_pixels": same_pixels,
           "same_bytes": same_bytes}, open(out, "w"))
"""


def test_tfds_load_yields_what_data_source_gives(bench, standard, tfds_dir, tmp_path):
  out = str(tmp_path / "load.json")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  run = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, tfds_dir, out], env=env, cwd=ROOT,
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(out) as f:
    result = json.load(f)
  assert result["tf_free"]  # building and data_source never import TensorFlow
  source = standard.as_data_source("train")
  n = len(source)
  assert len(result["rows"]) == len(result["same_pixels"]) == len(result["same_bytes"]) == n
  assert all(result["same_pixels"]) and all(result["same_bytes"])
  for row, ex in zip(result["rows"], (source[i] for i in range(n))):
    assert row == {k: _plain(v) for k, v in ex.items() if k != "image"}


def test_manifest_of_other_data_or_missing_manifest_fails_at_build(bench, tfds_dir, tmp_path):
  other = _make_dataset(tmp_path / "other", seed=1)
  shutil.copy(os.path.join(other.root, manifests.SPLITS_DIR, "standard.json"),
              os.path.join(bench.root, manifests.SPLITS_DIR, "foreign.json"))
  builder = tfds.builder(f"{tb.NAME}/foreign", data_dir=tfds_dir)
  with pytest.raises(ValueError, match="fingerprint") as err:
    builder.download_and_prepare(**_prepare_kwargs(bench.root))
  assert other.info["fingerprint"] in str(err.value) and bench.info["fingerprint"] in str(err.value)
  assert not os.path.exists(builder.data_dir)

  with pytest.raises(FileNotFoundError, match="nosuch.json.*standard"):
    tfds.builder(f"{tb.NAME}/nosuch", data_dir=tfds_dir).download_and_prepare(
        **_prepare_kwargs(bench.root))


def test_corrupt_record_is_reported_and_skipped(bench, tmp_path):
  root = str(tmp_path / "corrupt")
  shutil.copytree(bench.root, root)
  shard = os.path.join(root, bench.info["shards"][1]["path"])
  with open(shard, "rb") as f:
    data = bytearray(f.read())
  data[300:700] = bytes(b ^ 0xFF for b in data[300:700])  # inside the shard's first record
  with open(shard, "wb") as f:
    f.write(bytes(data))
  ds = records.Dataset(root)
  sha256 = ds.column("sha256").astype(str)
  bad = [i for i in range(len(ds)) if tb.read_record(ds, i, sha256[i])[0] is None]
  assert bad and set(bad) <= set(range(7, 14))  # records of the second shard (7 per shard)
  assert "unreadable" in tb.read_record(ds, bad[0], sha256[bad[0]])[1]
  assert "differs" in tb.read_record(bench, 0, "0" * 64)[1]

  builder = tb.ImageAttributionBench(config="standard", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(**_prepare_kwargs(root))
  manifest = _manifest(ds, "standard")
  skipped = builder.info.metadata["skipped"]
  for name, positions in manifest.splits.items():
    lost = [p for p in positions.tolist() if p in bad]
    assert [entry["position"] for entry in skipped[name]] == lost
    assert all("unreadable" in entry["reason"] for entry in skipped[name])
    source = builder.as_data_source(name)
    np.testing.assert_array_equal([source[i]["position"] for i in range(len(source))],
                                  [p for p in positions.tolist() if p not in bad])


def test_empty_split_is_left_out_and_listed(bench, tfds_dir):
  splits = {"train": [3, 1], "val": [], "test": [2]}
  made = manifests.make_manifest(name="tiny", protocol="standard", options={},
                                 dataset_info=bench.info, classes=["FLUX", "SDXL", "real"],
                                 splits=splits, report={})
  manifests.save_manifest(made, os.path.join(bench.root, manifests.SPLITS_DIR, "tiny.json"))
  builder = tfds.builder(f"{tb.NAME}/tiny", data_dir=tfds_dir)
  builder.download_and_prepare(**_prepare_kwargs(bench.root))
  assert set(builder.info.splits) == {"train", "test"}
  assert builder.info.metadata["empty_splits"] == ["val"]
  train = builder.as_data_source("train")
  assert [train[i]["position"] for i in range(len(train))] == [3, 1]


def test_command_line_builds_reuses_and_guards_the_build(bench, tmp_path, capsys):
  out = str(tmp_path / "tfds")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = subprocess.run([sys.executable, "-m", "iab_jax.data.tfds_builder", "--data", bench.root,
                        "--config", "semantic_cat", "--tfds_dir", out],
                       env=env, cwd=ROOT, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr
  manifest = _manifest(bench, "semantic_cat")
  for name, positions in manifest.splits.items():
    assert f"  {name}: {len(positions)} examples" in run.stdout
  assert manifest.digest in run.stdout

  other = _make_dataset(tmp_path / "other", seed=2)
  args = ["--data", other.root, "--config", "semantic_cat", "--tfds_dir", out]
  assert tb.main(args) == 2
  assert "already holds a build" in capsys.readouterr().err
  assert tb.main(args + ["--overwrite"]) == 0
  rebuilt = tb.ImageAttributionBench(config="semantic_cat", data_dir=out)
  assert rebuilt.info.metadata["dataset_fingerprint"] == other.info["fingerprint"]

  assert tb.main(["--data", str(tmp_path / "nowhere"), "--tfds_dir", out]) == 2
  assert "is not an iab_jax dataset" in capsys.readouterr().err
