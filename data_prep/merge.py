"""Joins iab_jax datasets into one: real photos, generated images, ingested downloads.

  python -m data_prep.merge --out bench/all bench/real bench/generated bench/commercial

The benchmark is built in parts (data_prep.sample_real, data_prep.generate per model or per
machine, data_prep.ingest for API-only generators); this writes their union as one dataset. Every
input's shards are checked against their checksums first. Keys must be unique across inputs
(the same image key twice is an error naming it); the same image bytes under two keys are
reported. The class list is the union in the official label order, and each record is rewritten
with its label under that list; the image bytes are copied unchanged. Each output shard appears
atomically, so a killed merge resumes where it stopped. Then split with `python -m data_prep.split`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys

from data_prep import _cli, ingest
from iab_jax.data import generators, records

READ_BATCH = 64  # records per read: bounds memory at 64 images whatever the shard size


def _check_inputs(out: str, inputs: list[records.Dataset]) -> None:
  problems = []
  for ds in inputs:
    if os.path.abspath(ds.root) == os.path.abspath(out):
      raise SystemExit(f"error: --out {out} is also an input; merge into a new directory")
    problems += [f"{ds.root}: {p}" for p in ds.verify()]
  if problems:
    raise SystemExit("error: input shards do not match their checksums:\n  " +
                     "\n  ".join(problems[:20]))
  keys = collections.Counter(k for ds in inputs for k in ds.column("key"))
  repeated = [k for k, n in keys.items() if n > 1]
  if repeated:
    raise SystemExit(f"error: {len(repeated)} keys occur in more than one input (e.g. "
                     f"{repeated[:3]}); the same images were given twice, or two inputs name "
                     "different images alike")


def _output_shard(out: str, input_index: int, shard_path: str) -> str:
  stem = os.path.basename(shard_path)
  return os.path.join(out, records.RECORDS_DIR, f"in{input_index:02d}-{stem}")


def copy_shard(src: str, dst: str, label_map: dict[str, int]) -> tuple[list[dict], str]:
  """Rewrites one shard with labels under the merged class list; (metadata, sha256 of dst)."""
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(src)
  try:
    with records.ShardWriter(dst) as writer:
      total = reader.num_records()
      for start in range(0, total, READ_BATCH):
        for data in reader.read(start, min(start + READ_BATCH, total)):
          record = records.deserialize(data)
          writer.write(dataclasses.replace(record, label=label_map[record.generator]))
  finally:
    reader.close()
  return writer.metadata, records.sha256_file(dst)


def merge(out: str, roots: list[str], quiet: bool = False) -> dict:
  for root in roots:
    _cli.require_dataset(root, "input")
  inputs = [records.Dataset(root) for root in roots]
  _check_inputs(out, inputs)
  classes = generators.class_order({c for ds in inputs for c in ds.classes})
  label_map = {name: i for i, name in enumerate(classes)}
  progress_dir = os.path.join(out, "merge")
  os.makedirs(progress_dir, exist_ok=True)
  shards, hashes, metadata = [], [], []
  for i, ds in enumerate(inputs):
    for shard in ds.shard_paths:
      dst = _output_shard(out, i, shard)
      done = os.path.join(progress_dir, os.path.basename(dst) + ".json")
      if os.path.exists(done) and os.path.exists(dst):
        with open(done) as f:
          summary = json.load(f)
      else:
        rows, digest = copy_shard(shard, dst, label_map)
        summary = {"records": rows, "sha256": digest}
        ingest.atomic_json(done, summary)
      shards.append(dst)
      hashes.append(summary["sha256"])
      metadata += summary["records"]
  by_sha = collections.defaultdict(list)
  for m in metadata:
    by_sha[m["sha256"]].append(m["key"])
  same_bytes = [keys for keys in by_sha.values() if len(keys) > 1]
  info = records.write_dataset_metadata(
      out, shards, metadata, classes, shard_sha256=hashes,
      merged_from=[{"path": os.path.abspath(ds.root), "fingerprint": ds.info["fingerprint"],
                    "num_records": len(ds)} for ds in inputs],
      identical_images=len(same_bytes))
  if not quiet:
    print(f"wrote {out}: {info['num_records']} records, {len(classes)} classes "
          f"({', '.join(classes)}) from {len(inputs)} datasets")
    if same_bytes:
      print(f"warning: {len(same_bytes)} images occur under more than one key, e.g. "
            f"{same_bytes[0][:3]}; data_prep.split keeps such copies in one split")
  return info


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.merge", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="the merged dataset directory to write")
  parser.add_argument("inputs", nargs="+", help="dataset directories to join")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  merge(args.out, args.inputs, args.quiet)
  return 0


if __name__ == "__main__":
  sys.exit(_cli.run(main))
