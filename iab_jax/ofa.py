"""OFA's simulator search space from the command line: its size and the architectures seeds name.

  python -m iab_jax.ofa --count                  # per-level count (11,880) and the total (~1.68e12)
  python -m iab_jax.ofa --describe --seed 7      # the architecture seed 7 draws: vector + words
  python -m iab_jax.ofa --sample 5 --seed 7      # 5 architectures drawn from seed 7

An architecture is the int32 vector iab_jax.models.ofa_simulator defines (ARCH_LEN = 25 entries,
canonical form); --describe draws it as architecture_from_seed(seed) does, --sample draws K of them
with sample_architectures(jax.random.key(seed), K). Bad arguments exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


class _OneLineParser(argparse.ArgumentParser):
  def error(self, message: str):
    print(f"{self.prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(prog="python -m iab_jax.ofa", description=__doc__.split("\n")[0])
  action = parser.add_mutually_exclusive_group(required=True)
  action.add_argument("--count", action="store_true",
                      help="print the per-level and total number of decoder architectures")
  action.add_argument("--describe", action="store_true",
                      help="print the architecture drawn from --seed")
  action.add_argument("--sample", type=int, metavar="K",
                      help="print K architectures drawn from --seed")
  parser.add_argument("--seed", type=int, help="the random seed (>= 0) of --describe / --sample")
  return parser


def _format(arch) -> str:
  from iab_jax.models import ofa_simulator as sim
  return f"{' '.join(str(int(v)) for v in arch)}\n  {sim.describe(arch)}"


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if (args.describe or args.sample is not None) and args.seed is None:
    parser.error("--describe and --sample need --seed N")
  if args.seed is not None and args.seed < 0:
    parser.error(f"--seed must be >= 0, got {args.seed}")
  if args.sample is not None and args.sample < 1:
    parser.error(f"--sample must be >= 1, got {args.sample}")

  # Imported after parsing, so that a bad command line answers without JAX's start-up.
  import jax
  import numpy as np

  from iab_jax.models import ofa_simulator as sim

  if args.count:
    per_level, total = sim.count_per_level(), sim.count_architectures()
    print(f"per level: {per_level:,} (upsamplers {len(sim.UPSAMPLERS)} x cells 1..{sim.MAX_CELLS} "
          f"of {len(sim.ACTIVATIONS)} activations x {len(sim.NORMS)} norms x "
          f"{len(sim.ORDERS)} orders)")
    print(f"total: {total:,} ({total:.3e}; start scales {', '.join(sim.STARTS)} run "
          f"{sim.NUM_LEVELS}..1 levels)")
  elif args.describe:
    print(_format(sim.architecture_from_seed(args.seed)))
  else:
    archs = np.asarray(sim.sample_architectures(jax.random.key(args.seed), args.sample))
    for i, arch in enumerate(archs):
      print(f"[{i}] {_format(arch)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
