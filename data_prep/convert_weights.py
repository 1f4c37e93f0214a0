"""Turns a PyTorch checkpoint (.pth/.pt/.bin) into a safetensors file, without running its pickle.

  python -m data_prep.convert_weights --src xception-43020ad28.pth --out legacy_xception.safetensors
  python -m data_prep.convert_weights --src vgg.pth --out lpips_vgg_lin.safetensors

The pickle is read with `torch.load(weights_only=True)`, which rebuilds tensors and plain
containers only and refuses any other object, so a malicious checkpoint cannot run code. Nested
checkpoints ({"state_dict": ...}, {"model": ...}, {"params": ...}) are unwrapped, a `module.`
prefix (DataParallel) can be stripped, and every tensor is written contiguous and unshared, with
its original key. The result is what `python -m iab_jax.weights --convert` and the models'
`load_pretrained` read. Needs torch; iab_jax itself never does.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

_WRAPPERS = ("state_dict", "model", "params", "model_state_dict", "net", "network")


def state_dict(obj: Any) -> dict[str, Any]:
  """The flat {name: tensor} dict inside a loaded checkpoint."""
  import torch

  while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      raise ValueError(f"no tensors found; top-level keys: {sorted(obj)[:20]}")
    obj = inner
  if not isinstance(obj, dict):
    raise ValueError(f"expected a dict of tensors, found {type(obj).__name__}")
  tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
  skipped = sorted(set(obj) - set(tensors))
  if skipped:
    print(f"skipping {len(skipped)} non-tensor entries: {', '.join(skipped[:10])}")
  return tensors


def convert(src: str, out: str, strip_prefix: str = "") -> dict[str, tuple[int, ...]]:
  import torch
  from safetensors.torch import save_file

  if not os.path.isfile(src):
    raise FileNotFoundError(f"{src}: no such file")
  try:
    obj = torch.load(src, map_location="cpu", weights_only=True)
  except Exception as e:  # weights_only refuses objects it cannot rebuild safely
    raise ValueError(f"{src}: not loadable as plain tensors (weights_only=True): {e}") from None
  tensors = state_dict(obj)
  if strip_prefix:
    tensors = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v
               for k, v in tensors.items()}
  tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  save_file(tensors, out, metadata={"converted_from": os.path.basename(src)})
  return {k: tuple(v.shape) for k, v in tensors.items()}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m data_prep.convert_weights",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--src", required=True, help=".pth/.pt/.bin checkpoint")
  parser.add_argument("--out", required=True, help="safetensors file to write")
  parser.add_argument("--strip_prefix", default="", help="e.g. 'module.' from DataParallel")
  args = parser.parse_args(argv)
  try:
    shapes = convert(args.src, args.out, args.strip_prefix)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {args.out}: {len(shapes)} tensors")


if __name__ == "__main__":
  main(sys.argv[1:])
