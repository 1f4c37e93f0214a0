"""The one record schema of iab_jax, its writer and its reader.

A record holds the original image file bytes, never re-encoded, and the metadata of one image.
On disk a record is `MAGIC | uint32 header length | JSON header | image bytes`; records live in
ArrayRecord shards (group_size:1, so any record can be read at random). A dataset directory is

  dataset.json        label map, classes, counts per generator x semantic, shards and their sha256
  index.parquet       one row per record, in dataset order: every metadata field, no pixels
  records/*.array_record

Dataset order is the concatenation of the shards in `dataset.json` order; manifests name records
by their position in that order and check them by sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
from typing import Any, Iterable, Sequence

import numpy as np

MAGIC = b"IAB1"
_HEADER = struct.Struct("<4sI")
DATASET_JSON = "dataset.json"
INDEX_PARQUET = "index.parquet"
RECORDS_DIR = "records"
SCHEMA_VERSION = 2  # 2: records and the index carry `group` (readers fill it in for version 1)
WRITER_OPTIONS = "group_size:1"


@dataclasses.dataclass
class ImageRecord:
  """One image and its metadata (DESIGN §3)."""

  image: bytes  # original file bytes
  key: str  # unique within a dataset, e.g. "SDXL/cat/x_p3_i0.png"
  generator: str
  label: int  # in its data set's class list; -1 where written before that list was known
  levels: tuple[int, int, int, int]  # Table 6 family levels 0-3 (-1 where unknown)
  semantic: str
  source: str
  width: int
  height: int
  format: str  # "PNG", "JPEG", ... as PIL names it
  sha256: str  # of `image`
  caption_id: str = ""
  caption: str = ""
  filename: str = ""  # original file name, for the official sorted-listdir order
  # What the record's content belongs to for group-disjoint splits (data_prep.split --protocol
  # group), e.g. its prompt; "" where it has none (every record of a dataset written before the
  # field existed).
  group: str = ""
  crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) applied on decode
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def metadata(self) -> dict[str, Any]:
    meta = dataclasses.asdict(self)
    del meta["image"]
    meta["levels"] = list(self.levels)
    meta["crop"] = list(self.crop) if self.crop else None
    return meta


METADATA_FIELDS = tuple(f.name for f in dataclasses.fields(ImageRecord) if f.name != "image")
# Fields added after datasets were first written, with the value a record written before has.
# Their index column may be absent (Dataset.column fills it in), and metadata written before
# (chunk summaries of an ingest resumed across the change) may lack them.
LATER_FIELDS = {"group": ""}
SIXTEEN_BIT_MODES = ("scale", "clip")


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def serialize(record: ImageRecord) -> bytes:
  header = json.dumps(record.metadata(), sort_keys=True, ensure_ascii=False).encode()
  return _HEADER.pack(MAGIC, len(header)) + header + record.image


def parse_header(data: bytes) -> tuple[dict[str, Any], int]:
  """Metadata dict and the offset where the image bytes start."""
  magic, length = _HEADER.unpack_from(data)
  if magic != MAGIC:
    raise ValueError(f"not an iab_jax record (magic {magic!r})")
  start = _HEADER.size + length
  return json.loads(data[_HEADER.size:start]), start


def deserialize(data: bytes) -> ImageRecord:
  meta, start = parse_header(data)
  meta["levels"] = tuple(meta["levels"])
  meta["crop"] = tuple(meta["crop"]) if meta.get("crop") else None
  return ImageRecord(image=bytes(data[start:]), **meta)


def image_bytes(data: bytes) -> memoryview:
  """The image bytes of a serialized record, without copying or parsing the header."""
  _, length = _HEADER.unpack_from(data)
  return memoryview(data)[_HEADER.size + length:]


class ShardWriter:
  """Writes records to one ArrayRecord file, atomically: it appears under its name on close."""

  def __init__(self, path: str):
    from array_record.python import array_record_module

    self.path = path
    self._tmp = path + ".tmp"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, WRITER_OPTIONS)
    self.metadata: list[dict[str, Any]] = []

  def write(self, record: ImageRecord) -> None:
    self._writer.write(serialize(record))
    self.metadata.append(record.metadata())

  def close(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self._writer.close()
      os.remove(self._tmp)


def read_shard(path: str) -> list[bytes]:
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.read_all()
  finally:
    reader.close()


def write_dataset_metadata(root: str, shards: Sequence[str], metadata: Sequence[dict[str, Any]],
                           classes: Sequence[str], shard_sha256: Sequence[str] | None = None,
                           **info: Any) -> dict[str, Any]:
  """Writes index.parquet and dataset.json for shards already under root/records.

  `metadata` holds one dict per record in dataset order (the shards' concatenation);
  `shard_sha256`, when the caller has just hashed the shards, saves reading them again.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq

  shard_info, offset = [], 0
  rel = [os.path.relpath(s, root) for s in shards]
  hashes = shard_sha256 if shard_sha256 is not None else [sha256_file(p) for p in shards]
  for path, name, digest in zip(shards, rel, hashes):
    n = _count_records(path)
    shard_info.append({"path": name, "num_records": n, "offset": offset, "sha256": digest})
    offset += n
  if offset != len(metadata):
    raise ValueError(f"shards hold {offset} records but {len(metadata)} metadata rows were given")
  # The label column follows `classes`, whatever a record's header says: records written before
  # their data set's class list was known (the generation stage) carry label -1 there.
  label_map = {name: i for i, name in enumerate(classes)}
  unknown = sorted({m["generator"] for m in metadata} - set(label_map))
  if unknown:
    raise ValueError(f"records of generator(s) {unknown} are not in the class list {list(classes)}")
  metadata = [{**m, "label": label_map[m["generator"]]} for m in metadata]
  columns = {f: [m.get(f, LATER_FIELDS[f]) if f in LATER_FIELDS else m[f] for m in metadata]
             for f in METADATA_FIELDS}
  columns["extra"] = [json.dumps(e, sort_keys=True) for e in columns["extra"]]
  columns["shard"] = [i for i, s in enumerate(shard_info) for _ in range(s["num_records"])]
  table = pa.table(columns)
  # Per-process temporary names: processes finishing together may each write the (same) files.
  tmp = os.path.join(root, f"{INDEX_PARQUET}.tmp{os.getpid()}")
  pq.write_table(table, tmp)
  os.replace(tmp, os.path.join(root, INDEX_PARQUET))

  counts: dict[str, dict[str, int]] = {}
  for m in metadata:
    per = counts.setdefault(m["generator"], {})
    per[m["semantic"]] = per.get(m["semantic"], 0) + 1
  index_sha = hashlib.sha256("\n".join(m["sha256"] for m in metadata).encode()).hexdigest()
  info_json = {
      "schema_version": SCHEMA_VERSION,
      "num_records": len(metadata),
      "classes": list(classes),
      "label_map": label_map,
      "counts": counts,
      "shards": shard_info,
      "fingerprint": index_sha,  # sha256 over the records' sha256 in dataset order
      **info,
  }
  tmp = os.path.join(root, f"{DATASET_JSON}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(info_json, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(root, DATASET_JSON))
  return info_json


def _count_records(path: str) -> int:
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def write_dataset(root: str, records: Iterable[ImageRecord], classes: Sequence[str],
                  records_per_shard: int = 1000, **info: Any) -> dict[str, Any]:
  """Writes a whole dataset in one go (mini-bench, tests, generation output)."""
  shards, metadata, writer = [], [], None
  for i, record in enumerate(records):
    if i % records_per_shard == 0:
      if writer:
        writer.close()
        metadata += writer.metadata
      path = os.path.join(root, RECORDS_DIR, f"part-{len(shards):05d}.array_record")
      writer = ShardWriter(path)
      shards.append(path)
    writer.write(record)
  if writer:
    writer.close()
    metadata += writer.metadata
  return write_dataset_metadata(root, shards, metadata, classes, **info)


class Dataset:
  """Read access to a dataset directory: metadata, index columns and records by position."""

  def __init__(self, root: str):
    path = os.path.join(root, DATASET_JSON)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{root} is not an iab_jax dataset: {DATASET_JSON} is missing "
                              "(build one with `python -m data_prep.ingest` or `data_prep.minibench`)")
    self.root = root
    with open(path) as f:
      self.info = json.load(f)
    self.classes: list[str] = self.info["classes"]
    self.shard_paths = [os.path.join(root, s["path"]) for s in self.info["shards"]]
    self._source = None
    self._index = None

  def __len__(self) -> int:
    return self.info["num_records"]

  @property
  def index(self):
    """The index as a pyarrow Table (metadata of every record, dataset order)."""
    if self._index is None:
      import pyarrow.parquet as pq

      self._index = pq.read_table(os.path.join(self.root, INDEX_PARQUET))
    return self._index

  def column(self, name: str) -> np.ndarray:
    """One index column in dataset order; a later field absent from an older index is filled
    with its default (e.g. `group` is "" for every record of a dataset written before it)."""
    if name not in self.index.column_names and name in LATER_FIELDS:
      return np.full(len(self), LATER_FIELDS[name], dtype=object)
    return self.index.column(name).to_numpy(zero_copy_only=False)

  @property
  def source(self):
    """A grain ArrayRecordDataSource over all shards, in dataset order."""
    if self._source is None:
      import grain

      self._source = grain.sources.ArrayRecordDataSource(self.shard_paths)
    return self._source

  def raw(self, i: int) -> bytes:
    return self.source[int(i)]

  def __getitem__(self, i: int) -> ImageRecord:
    return deserialize(self.raw(i))

  def verify(self, deep: bool = False) -> list[str]:
    """Problems found: shard checksums; with deep=True also every record's image sha256."""
    problems = []
    for shard, path in zip(self.info["shards"], self.shard_paths):
      if not os.path.exists(path):
        problems.append(f"{shard['path']}: missing")
      elif sha256_file(path) != shard["sha256"]:
        problems.append(f"{shard['path']}: sha256 mismatch")
    if deep and not problems:
      expected = self.column("sha256")
      for i in range(len(self)):
        if sha256_bytes(bytes(image_bytes(self.raw(i)))) != expected[i]:
          problems.append(f"record {i}: image sha256 mismatch")
    return problems


def decode(record: ImageRecord | bytes, sixteen_bit: str = "scale"):
  """Decodes a record (or serialized record) to an RGB PIL image, as the benchmark loads it.

  Matches the official loader's `Image.open(path).convert("RGB")`, plus the recorded crop (Grok3's
  watermark). `sixteen_bit` says what happens to 16-bit (and 32-bit integer or float) grayscale:
  "scale" (default) maps the full range onto 0..255; "clip" is what the official loader's
  `convert("RGB")` does, keeping values up to 255 and clipping the rest to 255, which turns most
  16-bit photos white. 16-bit RGB(A) PNGs decode alike either way: PIL itself keeps their high
  byte (value >> 8).
  """
  from PIL import Image

  _check_sixteen_bit(sixteen_bit)

  if isinstance(record, (bytes, bytearray, memoryview)):
    meta, start = parse_header(record)
    data, crop = memoryview(record)[start:], meta.get("crop")
  else:
    data, crop = record.image, record.crop
  img = Image.open(io.BytesIO(data))
  img = to_rgb(img, sixteen_bit)
  if crop:
    img = img.crop(tuple(crop))
  return img


def _check_sixteen_bit(sixteen_bit: str) -> None:
  if sixteen_bit not in SIXTEEN_BIT_MODES:
    raise ValueError(f"sixteen_bit must be one of {', '.join(SIXTEEN_BIT_MODES)}; "
                     f"got {sixteen_bit!r}")


MAX_PIXELS = 8192 * 8192  # larger images are refused as decompression bombs


class UnreadableImage(ValueError):
  """A file that is not a decodable image; the message is the reason, e.g. "empty file"."""


def open_image(data: bytes, max_pixels: int = MAX_PIXELS):
  """A PIL image of file bytes, header read but no pixel decoded; UnreadableImage for an empty
  file, a non-image, an unreadable header or more than `max_pixels` pixels (checked before any
  pixel is decoded). `load_rgb` decodes it. Ingest and attribution share these reasons."""
  from PIL import Image

  if not data:
    raise UnreadableImage("empty file")
  Image.MAX_IMAGE_PIXELS = None  # our own limit below
  try:
    img = Image.open(io.BytesIO(data))
  except Image.UnidentifiedImageError:
    raise UnreadableImage("not an image (no known image format)") from None
  except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem only
    raise UnreadableImage(f"unreadable image header ({type(e).__name__}: {e})") from None
  if img.width * img.height > max_pixels:
    raise UnreadableImage(f"decompression bomb refused: {img.width}x{img.height} exceeds "
                          f"{max_pixels} pixels")
  return img


def load_rgb(img, sixteen_bit: str = "scale"):
  """Decodes an `open_image` result to RGB (see to_rgb); UnreadableImage if it is truncated or
  corrupt."""
  try:
    img.load()
    return to_rgb(img, sixteen_bit)
  except Exception as e:  # noqa: BLE001
    raise UnreadableImage(f"truncated or corrupt {img.format} ({type(e).__name__}: {e})") from None


def to_rgb(img, sixteen_bit: str = "scale"):
  """RGB conversion of any PIL mode; 16-bit and float modes scaled ("scale") or clipped as PIL's
  own `convert("RGB")` does ("clip", the official loader's behaviour)."""
  from PIL import Image

  _check_sixteen_bit(sixteen_bit)
  if sixteen_bit == "clip":
    return img if img.mode == "RGB" else img.convert("RGB")
  if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    arr = np.asarray(img, dtype=np.int64)
    peak = 65535 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
    arr = np.clip(arr * 255 // peak, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "L")
  elif img.mode == "F":
    arr = np.asarray(img, dtype=np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
  return img if img.mode == "RGB" else img.convert("RGB")
