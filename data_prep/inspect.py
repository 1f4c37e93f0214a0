"""Shows what a dataset holds and reads it through the input pipeline.

  python -m data_prep.inspect --data PATH [--manifest standard --split train]
      [--transform "resize(64)|central_crop(64)"] [--degradation K] [--verify] [--deep]
      [--shortcut_baseline]

Prints the classes with their Table 6 family levels, the counts per generator x semantic class,
the manifest's split sizes, then reads --batches batches of the split through the grain pipeline
(using a matching pre-resized cache when one was built) and reports shapes and images/s. --verify
checks every shard's sha256, --deep also every image's. --shortcut_baseline prints, instead of
reading batches, the test accuracy of a classifier that sees only each image's format and size
(iab_jax.data.shortcuts.metadata_baseline) next to chance.
"""

import argparse
import os
import sys
import time

from data_prep import _cli


def counts_table(ds) -> str:
  """Label, class, family levels and records per semantic class, columns as wide as their
  content."""
  from iab_jax.data import generators

  counts = ds.info["counts"]
  present = {s for per in counts.values() for s in per}
  semantics = [s for s in generators.SEMANTIC_ORDER if s in present]
  semantics += sorted(present - set(semantics))
  levels_of = dict(zip(ds.column("generator"), ds.column("levels")))
  header = ["label", "class", "levels", *semantics, "total"]
  rows = []
  for label, name in enumerate(ds.classes):
    per = counts.get(name, {})
    levels = ",".join(str(v) for v in levels_of.get(name, generators.family_levels(name)))
    rows.append([str(label), name, levels, *(str(per.get(s, 0)) for s in semantics),
                 str(sum(per.values()))])
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  # Label, class and levels read left to right; counts line up on the right.
  left = 3

  def line(cells):
    return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  return "\n".join(line(r) for r in [header, *rows])


def _manifest_path(data: str, manifest: str) -> str:
  if os.path.exists(manifest):
    return manifest
  path = os.path.join(data, "splits", f"{manifest}.json")
  if not os.path.exists(path):
    raise _cli.fail(f"--manifest {manifest}: neither a file nor {path}; write it with "
                    f"`python -m data_prep.split --data {data} --protocol ...`")
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True)
  parser.add_argument("--manifest", default=None,
                      help="manifest file, or a name under DATA/splits (e.g. standard)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--transform", default="resize(64)|central_crop(64)")
  parser.add_argument("--degradation", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=4)
  parser.add_argument("--verify", action="store_true", help="check shard checksums")
  parser.add_argument("--deep", action="store_true", help="with --verify: every image's sha256")
  parser.add_argument("--shortcut_baseline", action="store_true",
                      help="with --manifest: the test accuracy of predicting the class from the "
                      "image format and size alone, next to chance (reads no pixels)")
  args = parser.parse_args(argv)
  _cli.require_dataset(args.data)
  if args.shortcut_baseline and not args.manifest:
    parser.error("--shortcut_baseline needs --manifest (the split to fit and test on)")
  path = _manifest_path(args.data, args.manifest) if args.manifest else None

  import numpy as np

  from iab_jax.data import manifests, records

  ds = records.Dataset(args.data)
  print(f"{args.data}: {len(ds)} records, {len(ds.classes)} classes, "
        f"{len(ds.shard_paths)} shards, fingerprint {ds.info['fingerprint'][:16]}")
  print(counts_table(ds))
  if args.verify:
    problems = ds.verify(deep=args.deep)
    print("verify: " + ("all checksums match" if not problems else f"{len(problems)} problems"))
    for p in problems:
      print(f"  {p}")
    if problems:
      return 1
  if not path:
    return 0
  try:
    manifest = manifests.load_manifest(path, ds)
  except ValueError as e:
    raise _cli.fail(f"--manifest {args.manifest}: {e}") from None
  print(f"manifest {manifest.name} ({manifest.protocol}): "
        + ", ".join(f"{k} {len(v)}" for k, v in manifest.splits.items()))
  if args.shortcut_baseline:
    from iab_jax.data import shortcuts

    try:
      result = shortcuts.metadata_baseline(ds, manifest)
    except ValueError as e:
      raise _cli.fail(f"--manifest {args.manifest}: {e}") from None
    print(shortcuts.format_baseline(result))
    return 0
  if args.split not in manifest.splits:
    raise SystemExit(f"error: --split {args.split!r} is not in the manifest "
                     f"(it has {', '.join(manifest.splits)})")
  from iab_jax.data import pipeline  # imports grain and JAX: only now that the input is checked

  labels = manifests.labels_for(manifest, ds)
  it = iter(pipeline.make_dataset(
      ds, manifest.splits[args.split], labels, args.transform, batch_size=args.batch_size,
      train=args.split == "train", degradation=args.degradation, process_index=0,
      process_count=1))
  start, n, batch = time.perf_counter(), 0, None
  for _ in range(args.batches):
    step = next(it, None)
    if step is None:
      break
    batch, n = step, n + int(step["mask"].sum())
  elapsed = time.perf_counter() - start
  if batch is not None:
    shapes = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in batch.items())
    print(f"read {n} images of split {args.split!r} in {elapsed:.2f} s "
          f"({n / elapsed:.0f} images/s); batch: {shapes}")
    labels = batch["label"][batch["mask"] & (batch["label"] >= 0)]
    print("labels in the last batch: " + str(np.bincount(labels,
                                                        minlength=len(manifest.classes))))
  return 0


if __name__ == "__main__":
  sys.exit(_cli.run(main))
