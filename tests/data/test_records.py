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


def png16(samples: np.ndarray) -> bytes:
  """A 16-bit PNG of uint16 samples: (H, W) grayscale, (H, W, 2) gray+alpha, (H, W, 3) RGB or
  (H, W, 4) RGBA (PIL reads these but cannot write the colour ones)."""
  import struct
  import zlib

  samples = np.asarray(samples, np.uint16)
  h, w = samples.shape[:2]
  channels = 1 if samples.ndim == 2 else samples.shape[2]
  color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
  rows = samples.reshape(h, w * channels).astype(">u2")
  raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

  ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
          + chunk(b"IEND", b""))


def _raw_record(data, fmt="PNG"):
  with Image.open(io.BytesIO(data)) as img:
    size = img.size
  return records.ImageRecord(
      image=data, key="g/cat/x.png", generator="g", label=0, levels=(0, 1, 1, 6),
      semantic="cat", source="t", width=size[0], height=size[1], format=fmt,
      sha256=records.sha256_bytes(data))


def _sixteen_bit_files():
  rng = np.random.default_rng(5)
  files = {
      "gray16": png16(rng.integers(0, 65536, (6, 7))),
      "gray16_dark": png16(rng.integers(0, 300, (6, 7))),
      "la16": png16(rng.integers(0, 65536, (6, 7, 2))),
      "rgb16": png16(rng.integers(0, 65536, (6, 7, 3))),
      "rgba16": png16(rng.integers(0, 65536, (6, 7, 4))),
  }
  tiff = io.BytesIO()
  Image.fromarray(rng.integers(0, 70000, (6, 7)).astype(np.int32), "I").save(tiff, "TIFF")
  files["int32_tiff"] = tiff.getvalue()
  for mode in ("L", "P", "RGBA", "CMYK"):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).convert(mode).save(
        buf, "JPEG" if mode == "CMYK" else "PNG")
    files[mode] = buf.getvalue()
  return files


@pytest.mark.parametrize("name", list(_sixteen_bit_files()))
def test_decode_clip_is_pils_own_conversion(name):
  data = _sixteen_bit_files()[name]
  want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  got = records.decode(_raw_record(data), sixteen_bit="clip")
  assert got.mode == "RGB"
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(
      np.asarray(records.decode(records.serialize(_raw_record(data)), sixteen_bit="clip")), want)


def test_decode_scale_maps_sixteen_bit_range():
  rng = np.random.default_rng(6)
  gray = rng.integers(0, 65536, (5, 4))
  got = np.asarray(records.decode(_raw_record(png16(gray))))  # "scale" is the default
  np.testing.assert_array_equal(got[..., 0], gray * 255 // 65535)
  clipped = np.asarray(records.decode(_raw_record(png16(gray)), sixteen_bit="clip"))
  np.testing.assert_array_equal(clipped[..., 0], np.minimum(gray, 255))
  # 16-bit RGB: PIL itself keeps the high byte; both modes give that.
  rgb = rng.integers(0, 65536, (5, 4, 3))
  for mode in records.SIXTEEN_BIT_MODES:
    np.testing.assert_array_equal(
        np.asarray(records.decode(_raw_record(png16(rgb)), sixteen_bit=mode)), rgb >> 8)
  with pytest.raises(ValueError, match="sixteen_bit must be one of scale, clip"):
    records.decode(_raw_record(png16(gray)), sixteen_bit="round")


def test_group_field_round_trip(tmp_path):
  import dataclasses

  recs = [dataclasses.replace(_record(i), group=f"prompt_{i % 3}") for i in range(7)]
  assert records.deserialize(records.serialize(recs[4])).group == "prompt_1"
  records.write_dataset(str(tmp_path), iter(recs), ["g"], records_per_shard=3)
  ds = records.Dataset(str(tmp_path))
  assert list(ds.column("group")) == [f"prompt_{i % 3}" for i in range(7)]
  assert ds[5].group == "prompt_2"
  assert "group" in records.METADATA_FIELDS


def test_dataset_written_before_groups_still_loads(tmp_path):
  """A dataset whose index has no group column and whose record headers have no group field."""
  import hashlib
  import json

  import pyarrow.parquet as pq

  recs = [_record(i) for i in range(5)]
  info = records.write_dataset(str(tmp_path), iter(recs), ["g"])
  # The fingerprint is still the sha256 over the records' sha256 in dataset order.
  assert info["fingerprint"] == hashlib.sha256(
      "\n".join(r.sha256 for r in recs).encode()).hexdigest()
  index_path = tmp_path / records.INDEX_PARQUET
  pq.write_table(pq.read_table(index_path).drop(["group"]), index_path)
  ds = records.Dataset(str(tmp_path))
  assert "group" not in ds.index.column_names
  assert list(ds.column("group")) == [""] * 5
  assert ds.info["fingerprint"] == info["fingerprint"]
  # A header written without the field reads back with the empty group.
  meta = recs[0].metadata()
  del meta["group"]
  header = json.dumps(meta).encode()
  old = records._HEADER.pack(records.MAGIC, len(header)) + header + recs[0].image
  assert records.deserialize(old).group == ""
  # Metadata of chunks written before the field (an ingest resumed across the change) merges.
  old_rows = [{k: v for k, v in r.metadata().items() if k != "group"} for r in recs]
  records.write_dataset_metadata(str(tmp_path), ds.shard_paths, old_rows, ["g"])
  assert list(records.Dataset(str(tmp_path)).column("group")) == [""] * 5
