"""Builds the lossless pre-resized cache that training reads (see iab_jax.data.cache).

  python -m data_prep.build_cache --data PATH [--spec "resize(256)|central_crop(256)"]
      [--codec raw|png] [--jobs N]

Run it once after ingest; rerun after a kill to finish the missing shards.
"""

import argparse
import sys
import time

from data_prep import _cli
from iab_jax.data import cache, records


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.build_cache", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="dataset directory (from ingest)")
  parser.add_argument("--spec", default=cache.DEFAULT_SPEC,
                      help="deterministic transform ops to store, e.g. 'resize(256)'")
  parser.add_argument("--codec", default="raw", choices=sorted(cache.CODECS),
                      help="raw: fastest to read; png: lossless and ~2x smaller")
  parser.add_argument("--out", default=None, help="cache directory (default: DATA/cache/<spec>)")
  parser.add_argument("--jobs", type=int, default=0, help="processes (0: one per core)")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  _cli.require_dataset(args.data)
  try:
    cache.check_spec(args.spec)
  except ValueError as e:
    raise _cli.fail(f"--spec {args.spec}: {e}") from None
  start = time.time()
  built = cache.build(records.Dataset(args.data), args.spec, args.codec, args.out, args.jobs,
                      args.quiet)
  if not args.quiet:
    print(f"cache {built.spec!r} of {built.info['num_records']} records at {built.root} "
          f"({time.time() - start:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(_cli.run(main))
