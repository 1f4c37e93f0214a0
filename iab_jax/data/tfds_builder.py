"""The benchmark as a TensorFlow Datasets dataset, built from an iab_jax dataset and its manifests.

For users of the TFDS API. The source is an iab_jax dataset directory (dataset.json, records,
`splits/*.json`), handed over as TFDS "manual" data; a builder config is one split manifest and
its splits (train/val/test, open-set also test_unknown) hold exactly the manifest's records in the
manifest's order. Build it once:

  python -m iab_jax.data.tfds_builder --data /data/iab --config standard --tfds_dir ~/tfds

then read it, with TensorFlow (`tfds.load`) or without (`tfds.data_source`, random access):

  import tensorflow_datasets as tfds
  import iab_jax.data.tfds_builder  # registers "image_attribution_bench"
  source = tfds.data_source("image_attribution_bench/standard", data_dir="~/tfds", split="test")
  ds = tfds.load("image_attribution_bench/standard", data_dir="~/tfds", split="train")

Building from Python instead of the command line: pass the dataset directory as the manual dir,
`download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=DATA)}`.
Configs: `standard`, `semantic_cat`, `semantic_bedroom`, `semantic_FFHQ`, and any other manifest
under DATA/splits by its file stem (`image_attribution_bench/openset_fold2`, `standard_official`).

The `image` feature stores each record's original file, bit for bit (PNG and JPEG alike, never
re-encoded), and decodes it to uint8 RGB exactly as `records.decode` does: grayscale, palette,
RGBA and 16-bit files are converted by `records.to_rgb` in both the NumPy and the TensorFlow
reader, where the stock `tfds.features.Image` would hand back palette indices, four channels or
wrapped 16-bit values. `records.decode` also applies the record's `crop` (Grok3's watermark): here
the image is the uncropped file and the `crop` feature holds the box (-1s when there is none).
`decoders={"image": tfds.decode.SkipDecoding()}` returns the file bytes.

`label` is the index of the record's generator in the manifest's classes (-1 for open-set
unknowns), as `manifests.labels_for` gives it; `position` is the record's position in the
dataset. The DatasetInfo metadata holds the dataset fingerprint and the manifest digest it was
built from, and the records skipped as corrupt (none, normally).

The files are ArrayRecord, for random access without TensorFlow. TFDS itself reads ArrayRecord
only through `data_source`; the builder gives `tfds.load` a tf.data reader over the same files.
Only this module imports tensorflow_datasets in iab_jax, and it imports TensorFlow only inside
that reader and the image feature's TensorFlow decoder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from iab_jax.data import generators as gen_lib
from iab_jax.data import manifests
from iab_jax.data import records

NAME = "image_attribution_bench"
HOMEPAGE = "https://github.com/mtry/ImageAttributionBench"
CITATION = """@misc{mou2025imageattributionbench,
  title = {ImageAttributionBench: How Far Are We from Generalizable Attribution?},
  author = {Mou, Tingshu and Wei, Zhipeng and Gong, Chao and Chen, Jingjing and Ma, Xingjun},
}"""
NO_CROP = (-1, -1, -1, -1)
TEXT_FIELDS = ("key", "generator", "semantic", "source", "caption_id", "caption", "filename",
               "format", "sha256", "group")


def decode_rgb(data: bytes) -> np.ndarray:
  """An original image file as uint8 RGB (H, W, 3), converted as `records.decode` converts it."""
  from PIL import Image

  with Image.open(io.BytesIO(bytes(data))) as img:
    return np.asarray(records.to_rgb(img))


class RGBImage(tfds.features.Image):
  """An Image feature fed original file bytes that decodes any mode to RGB like `records.decode`.

  Both readers call `decode_rgb`: TensorFlow's own decoders would scale 16-bit values by a shift
  where `records.to_rgb` rounds down 255/65535, and decode JPEG with a faster, inexact DCT, so the
  two APIs would disagree with each other and with training through grain.
  """

  def decode_example_np(self, example: bytes) -> np.ndarray:
    return decode_rgb(example)

  def decode_example(self, example):
    import tensorflow as tf

    image = tf.numpy_function(decode_rgb, [example], tf.uint8, stateful=False)
    image.set_shape(self.shape)
    return image


def manifest_config(name: str, description: str = "") -> tfds.core.BuilderConfig:
  """The builder config of manifest `<data>/splits/<name>.json`."""
  return tfds.core.BuilderConfig(
      name=name, description=description or f"the splits of manifest splits/{name}.json")


BUILDER_CONFIGS = [manifest_config(
    manifests.manifest_name("standard"),
    "standard protocol: every class split 8:1:1 across all semantic classes")] + [
    manifest_config(manifests.manifest_name("semantic", semantic=semantic),
                    f"semantic task {task}: train/val on {semantic} images (9:1), test on the "
                    "other semantic classes")
    for task, semantic in gen_lib.SEMANTIC_TASKS.items()]

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The manual dir is an iab_jax dataset directory with its split manifests:
  1. build the dataset, from the download with
       python -m data_prep.ingest --src /data/ImageAttributionBench --out DATA
     or with the generation stage (or `python -m data_prep.minibench --out DATA` for a small one);
  2. write the manifest of the config you want, e.g.
       python -m data_prep.split --data DATA --protocol standard
       python -m data_prep.split --data DATA --protocol semantic --semantic 1
  3. pass DATA as the manual dir: `python -m iab_jax.data.tfds_builder --data DATA ...`, or
     `download_config=tfds.download.DownloadConfig(manual_dir=DATA)`.
The config name is the manifest's file stem: config `standard` reads DATA/splits/standard.json.
"""


def _features() -> tfds.features.FeaturesDict:
  text = {name: tfds.features.Text() for name in TEXT_FIELDS}
  return tfds.features.FeaturesDict({
      "image": RGBImage(shape=(None, None, 3), dtype=np.uint8),
      # The names are the manifest's classes, known once the manual dir is read; a prepared
      # dataset restores them from its label file.
      "label": tfds.features.ClassLabel(),
      "position": tfds.features.Scalar(dtype=np.int64),
      **text,
      "width": tfds.features.Scalar(dtype=np.int32),
      "height": tfds.features.Scalar(dtype=np.int32),
      "levels": tfds.features.Tensor(shape=(4,), dtype=np.int32),
      "crop": tfds.features.Tensor(shape=(4,), dtype=np.int32),
      "extra": tfds.features.Text(),  # the record's `extra` dict as JSON
  })


def example_of(record: records.ImageRecord, position: int, label: int) -> dict[str, Any]:
  """The TFDS example of one record: original bytes, manifest label and every metadata field."""
  return {
      "image": record.image,
      "label": int(label),
      "position": int(position),
      **{name: getattr(record, name) for name in TEXT_FIELDS},
      "width": record.width,
      "height": record.height,
      "levels": np.asarray(record.levels, np.int32),
      "crop": np.asarray(record.crop or NO_CROP, np.int32),
      "extra": json.dumps(record.extra, sort_keys=True, ensure_ascii=False),
  }


def read_record(ds: records.Dataset, position: int, sha256: str
                ) -> tuple[records.ImageRecord | None, str]:
  """The record at `position`, or None and the reason when it is unreadable or not `sha256`."""
  try:
    record = records.deserialize(ds.raw(position))
  except RuntimeError as e:  # ArrayRecord's chunk hash check
    return None, f"unreadable record ({e})"
  except (ValueError, KeyError, TypeError) as e:  # bad magic, header JSON or fields
    return None, f"not an iab_jax record ({e})"
  digest = records.sha256_bytes(record.image)
  if digest != sha256:
    return None, f"image sha256 {digest[:12]} differs from the index's {sha256[:12]}"
  return record, ""


# Run as a script, this file is also imported as iab_jax.data.tfds_builder (see the bottom), and
# TFDS registers a builder name only once: the __main__ copy stays unregistered.
class ImageAttributionBench(tfds.core.GeneratorBasedBuilder,
                            skip_registration=__name__ == "__main__"):
  """ImageAttributionBench: attribute an image to the generator (or real source) that made it."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Original file bytes, manifest labels and every record field.",
                   "1.1.0": "The record's group (data_prep.ingest --group_from; '' for none)."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    # ArrayRecord gives random access (tfds.data_source, grain) and builds without TensorFlow.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _create_builder_config(self, builder_config, version):
    # Every manifest is a config: an unknown name ("openset_fold2") becomes one, not an error.
    if (isinstance(builder_config, str) and ":" not in builder_config
        and builder_config not in self.builder_configs):
      builder_config = manifest_config(builder_config)
    return super()._create_builder_config(builder_config, version)

  def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """tf.data over the ArrayRecord files (TFDS reads those only through `as_data_source`).

    Reads each serialized example by random access, then parses and decodes it as TFDS parses a
    TFRecord build, so `tfds.load` gives what `tfds.data_source` gives. The split keeps the
    manifest's order; `shuffle_files=True` shuffles the examples themselves (seeded by
    `read_config.shuffle_seed`) and `read_config.input_context` shards them by pipeline.
    """
    read_config = read_config or tfds.ReadConfig()
    if (read_config.file_format or self.info.file_format) != tfds.core.FileFormat.ARRAY_RECORD:
      return super()._as_dataset(split, decoders, read_config, shuffle_files)
    import tensorflow as tf
    from tensorflow_datasets.core import example_parser

    features = self.info.features
    if isinstance(decoders, tfds.decode.PartialDecoding):
      features, decoders = decoders.extract_features(features), decoders.decoders
    source = self.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    parser = example_parser.ExampleParser(features.get_serialized_info())

    order = tf.data.Dataset.range(len(source))
    if read_config.input_context:
      context = read_config.input_context
      order = order.shard(context.num_input_pipelines, context.input_pipeline_id)
    if shuffle_files:
      order = order.shuffle(len(source), seed=read_config.shuffle_seed)
    raw = order.map(lambda i: tf.numpy_function(lambda j: source[int(j)], [i], tf.string,
                                                stateful=False),
                    num_parallel_calls=tf.data.AUTOTUNE)  # map keeps the order
    return raw.map(lambda data: features.decode_example(parser.parse_example(data),
                                                        decoders=decoders),
                   num_parallel_calls=tf.data.AUTOTUNE)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Images from up to 31 text-to-image generators and real photographs of 10 "
                     "semantic classes, labelled by the generator that made them."),
        features=_features(),
        supervised_keys=("image", "label"),
        homepage=HOMEPAGE,
        citation=CITATION,
        disable_shuffling=True,  # splits keep the manifest's order
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    ds = records.Dataset(root)
    manifest = manifests.load_manifest(manifest_path(root, self.builder_config.name), ds)
    self.info.features["label"].names = manifest.classes
    skipped: dict[str, list[dict[str, Any]]] = {}
    self.info.metadata.update({
        "dataset_fingerprint": ds.info["fingerprint"],
        "dataset_num_records": len(ds),
        "manifest_name": manifest.name or self.builder_config.name,
        "manifest_digest": manifest.digest,
        "manifest_protocol": manifest.protocol,
        "manifest_options": manifest.options,
        "skipped": skipped,  # filled while the splits are written
        # TFDS cannot write a split without examples: an empty one is left out and listed.
        "empty_splits": [split for split, positions in manifest.splits.items()
                         if not len(positions)],
    })
    labels = manifests.labels_for(manifest, ds)
    sha256 = ds.column("sha256").astype(str)
    return {split: self._generate_examples(ds, positions, labels, sha256,
                                           skipped.setdefault(split, []))
            for split, positions in manifest.splits.items() if len(positions)}

  def _generate_examples(self, ds: records.Dataset, positions: np.ndarray, labels: np.ndarray,
                         sha256: np.ndarray, skipped: list[dict[str, Any]]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    # The key is the index in the split: with shuffling disabled TFDS writes examples in key order.
    for i, position in enumerate(positions.tolist()):
      record, reason = read_record(ds, position, sha256[position])
      if record is None:
        logging.warning("skipping record %d (split position %d): %s", position, i, reason)
        skipped.append({"position": position, "reason": reason})
        continue
      yield i, example_of(record, position, labels[position])


def manifest_path(root: str, name: str) -> str:
  """Where config `name` reads its manifest; a clear error when it is not there."""
  path = os.path.join(root, manifests.SPLITS_DIR, name + ".json")
  if not os.path.exists(path):
    splits_dir = os.path.join(root, manifests.SPLITS_DIR)
    present = sorted(f[:-5] for f in os.listdir(splits_dir) if f.endswith(".json")) \
        if os.path.isdir(splits_dir) else []
    raise FileNotFoundError(
        f"config {name!r} needs the manifest {path}, which does not exist; manifests in "
        f"{root!r}: {', '.join(present) or 'none'} (write one with `python -m data_prep.split`)")
  return path


def build(data: str, config: str, tfds_dir: str, overwrite: bool = False
          ) -> tfds.core.DatasetBuilder:
  """Builds config `config` from dataset directory `data` into `tfds_dir`; returns the builder.

  A build already in `tfds_dir` is reused when it was made from the same data and manifest;
  otherwise this raises, unless `overwrite` replaces it.
  """
  ds = records.Dataset(data)  # a clear error for a wrong --data before TFDS is involved
  manifest = manifests.load_manifest(manifest_path(data, config), ds)
  builder = ImageAttributionBench(config=config, data_dir=tfds_dir)
  if overwrite and os.path.isdir(builder.data_dir):
    shutil.rmtree(builder.data_dir)
    builder = ImageAttributionBench(config=config, data_dir=tfds_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.abspath(data)))
  built = (builder.info.metadata.get("dataset_fingerprint"),
           builder.info.metadata.get("manifest_digest"))
  if built != (ds.info["fingerprint"], manifest.digest):
    raise ValueError(
        f"{builder.data_dir} already holds a build of config {config!r} from dataset fingerprint "
        f"{built[0]} and manifest digest {built[1]}, but {data!r} has fingerprint "
        f"{ds.info['fingerprint']} and manifest digest {manifest.digest}; pass --overwrite to "
        "rebuild it")
  return builder


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m iab_jax.data.tfds_builder",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="iab_jax dataset directory (dataset.json, "
                      "records, splits/*.json)")
  parser.add_argument("--config", default="standard",
                      help="manifest name, the file stem under DATA/splits (default standard)")
  parser.add_argument("--tfds_dir", required=True, help="TFDS data_dir to build into")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a build of this config made from other data or manifest")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    builder = build(args.data, args.config, args.tfds_dir, overwrite=args.overwrite)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  meta = builder.info.metadata
  print(f"{NAME}/{args.config} in {builder.data_dir}")
  print(f"dataset fingerprint {meta['dataset_fingerprint']}, manifest digest "
        f"{meta['manifest_digest']}, {len(builder.info.features['label'].names)} classes")
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples")
  for split, skipped in meta["skipped"].items():
    for entry in skipped:
      print(f"  skipped from {split}: record {entry['position']}: {entry['reason']}")
  return 0


if __name__ == "__main__":
  from iab_jax.data import tfds_builder  # the registered copy of the builder

  sys.exit(tfds_builder.main(sys.argv[1:]))
