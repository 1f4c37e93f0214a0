"""The record schema, shard writer and reader, checksums and decoding."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from iab_jax.data import records


def _record(i, mode="RGB", fmt="PNG", crop=None, size=(12, 10)):
  arr = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).convert(mode).save(buf, fmt)
  data = buf.getvalue()
  return records.ImageRecord(
      image=data, key=f"g/cat/{i}.png", generator="g", label=0, levels=(0, 1, 1, 6),
      semantic="cat", source="AFHQ", width=size[0], height=size[1], format=fmt,
      sha256=records.sha256_bytes(data), caption_id="cat/p3", caption="a cat, \u00e9t\u00e9",
      filename=f"{i}.png", crop=crop, extra={"mode": mode})


def test_serialize_round_trip_keeps_bytes_and_metadata():
  rec = _record(0, crop=(0, 0, 5, 4))
  data = records.serialize(rec)
  back = records.deserialize(data)
  assert back == rec
  assert bytes(records.image_bytes(data)) == rec.image
  with pytest.raises(ValueError, match="not an iab_jax record"):
    records.deserialize(b"XXXX" + data[4:])


def test_dataset_order_index_and_verify(tmp_path):
  recs = [_record(i) for i in range(23)]
  info = records.write_dataset(str(tmp_path), iter(recs), ["g"], records_per_shard=5)
  assert [s["num_records"] for s in info["shards"]] == [5, 5, 5, 5, 3]
  ds = records.Dataset(str(tmp_path))
  assert len(ds) == 23 and ds.info["counts"] == {"g": {"cat": 23}}
  assert [ds[i].key for i in range(23)] == [r.key for r in recs]
  assert list(ds.column("sha256")) == [r.sha256 for r in recs]
  assert ds.verify(deep=True) == []
  # A flipped byte in a shard is found.
  path = ds.shard_paths[2]
  blob = bytearray(open(path, "rb").read())
  blob[len(blob) // 2] ^= 0xFF
  open(path, "wb").write(bytes(blob))
  assert any("sha256 mismatch" in p for p in records.Dataset(str(tmp_path)).verify())


def test_labels_follow_the_class_list_not_the_headers(tmp_path):
  import dataclasses

  recs = [dataclasses.replace(_record(i), label=-1, generator=g, key=f"{g}/{i}")
          for i, g in enumerate(["b", "a", "b"])]
  info = records.write_dataset(str(tmp_path / "ok"), iter(recs), ["a", "b"])
  assert info["label_map"] == {"a": 0, "b": 1}
  assert list(records.Dataset(str(tmp_path / "ok")).column("label")) == [1, 0, 1]
  with pytest.raises(ValueError, match=r"generator\(s\) \['b'\] are not in the class list"):
    records.write_dataset(str(tmp_path / "bad"), iter(recs), ["a"])


def test_writer_is_atomic(tmp_path):
  path = str(tmp_path / "records" / "x.array_record")
  with pytest.raises(RuntimeError):
    with records.ShardWriter(path) as w:
      w.write(_record(1))
      raise RuntimeError("killed")
  assert os.listdir(tmp_path / "records") == []


def test_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset.json is missing"):
    records.Dataset(str(tmp_path))


def test_decode_modes_and_crop():
  assert records.decode(_record(2, crop=(1, 2, 9, 8))).size == (8, 6)
  for mode in ("L", "P", "RGBA", "CMYK"):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = records.decode(_record(3, mode=mode, fmt=fmt))
    assert img.mode == "RGB" and img.size == (12, 10)
  sixteen = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
  assert np.asarray(records.to_rgb(sixteen))[0, :, 0].tolist() == [0, 127, 255]
