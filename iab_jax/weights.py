"""Pretrained weights by name: where each public checkpoint comes from, where it lives, how it loads.

Every model module in iab_jax/models lists the public checkpoints it can load in `CHECKPOINTS`
(Hugging Face repo and file, the reference layout, the architecture, the preprocessing the
weights expect). This module gathers them:

  python -m iab_jax.weights --list                        every name, its source and file
  python -m iab_jax.weights --convert NAME --src FILE --out DIR

`load(name)` finds `<cache_dir>/<name>/<filename>`. When the file is absent and the machine is
online, it downloads it with huggingface_hub. Offline, it stops with one message that names the
file, where to get it and where to put it. The cache directory is `$IAB_WEIGHTS`, or
`~/.cache/iab_jax/weights`.

Files are safetensors read with numpy: a checkpoint is never unpickled here. A `.pth`/`.bin`
checkpoint is first turned into safetensors by `python -m data_prep.convert_weights` (which
needs torch and loads with weights_only=True). `--convert` reads a reference-layout safetensors
file, checks that it converts, and writes the Flax variables as `<out>/<name>.safetensors`
("params/conv1/kernel"-style keys, the name and architecture in the header). Such a file loads
without conversion.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import sys
from typing import Any, Sequence

import numpy as np

FLAX_FORMAT = "iab_jax.flax_variables"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  name: str
  module: str  # iab_jax.models.<module>
  source: str  # Hugging Face repo id
  filename: str
  layout: str
  arch: dict[str, Any]
  preprocess: str
  notes: str = ""
  loader: str = "load_pretrained"  # the module function that reads the file into variables
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # module-specific entries

  @property
  def on_hub(self) -> bool:
    return not self.source.startswith(("http://", "https://"))

  @property
  def url(self) -> str:
    if not self.on_hub:
      return self.source
    return f"https://huggingface.co/{self.source}/blob/main/{self.filename}"

  @property
  def local_filename(self) -> str:
    """The file the cache holds: the published one, or its safetensors conversion."""
    if self.filename.endswith(".safetensors"):
      return self.filename
    return os.path.splitext(os.path.basename(self.filename))[0] + ".safetensors"


def registry() -> dict[str, Checkpoint]:
  """Every checkpoint of every model module, by name."""
  from iab_jax import models

  out: dict[str, Checkpoint] = {}
  for info in pkgutil.iter_modules(models.__path__):
    if info.name.startswith("_"):
      continue
    module = importlib.import_module(f"iab_jax.models.{info.name}")
    for name, entry in getattr(module, "CHECKPOINTS", {}).items():
      if name in out:
        raise ValueError(f"checkpoint {name!r} is listed by both {out[name].module} and "
                         f"{info.name}")
      known = {f.name for f in dataclasses.fields(Checkpoint)}
      out[name] = Checkpoint(name=name, module=info.name,
                             **{k: v for k, v in entry.items() if k in known},
                             extra={k: v for k, v in entry.items() if k not in known})
  return out


def get(name: str) -> Checkpoint:
  checkpoints = registry()
  if name not in checkpoints:
    raise ValueError(f"unknown pretrained weights {name!r}; known: {', '.join(sorted(checkpoints))}"
                     " (python -m iab_jax.weights --list)")
  return checkpoints[name]


def default_cache_dir() -> str:
  return os.environ.get("IAB_WEIGHTS") or os.path.join(
      os.path.expanduser("~"), ".cache", "iab_jax", "weights")


def _online() -> bool:
  if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
    return False
  try:
    import huggingface_hub  # noqa: F401
  except ImportError:
    return False
  return True


def load(name: str, cache_dir: str | None = None, *, download: bool | None = None) -> str:
  """The local path of checkpoint `name`, downloaded into the cache when absent and online.

  Only safetensors files on the Hugging Face hub download by themselves; a pickled checkpoint
  (.pth/.bin) must be converted by `python -m data_prep.convert_weights` first, and the error says
  exactly how.
  """
  ckpt = get(name)
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, name, ckpt.local_filename)
  if os.path.isfile(path):
    return path
  pickled = ckpt.local_filename != ckpt.filename
  if download is None:
    download = _online() and ckpt.on_hub and not pickled
  reason = ""
  if download:
    try:
      from huggingface_hub import hf_hub_download

      return hf_hub_download(repo_id=ckpt.source, filename=ckpt.filename,
                             local_dir=os.path.join(cache_dir, name))
    except Exception as e:  # no network, no such repo: fall through to the offline message
      reason = f" (download failed: {type(e).__name__}: {str(e).splitlines()[0][:200]})"
  how = (f"Download {ckpt.filename} from {ckpt.url} ({ckpt.layout}), convert it with "
         f"`python -m data_prep.convert_weights --src {ckpt.filename} --out {path}` (needs torch)"
         if pickled else
         f"Get {ckpt.filename} from {ckpt.url} ({ckpt.layout}) and put it there")
  raise FileNotFoundError(
      f"pretrained weights {name!r} not found at {path}{reason}. {how}, or set $IAB_WEIGHTS to "
      f"the directory that holds {name}/{ckpt.local_filename}.")


def resolve(value: str, cache_dir: str | None = None) -> str:
  """A config's `pretrained` value -> a file: a registered name, else a path taken as is."""
  if value in registry():
    return load(value, cache_dir)
  return value


def resolve_or_random(value: str, config, key: str) -> str | None:
  """`resolve(value)` for a method's pretrained-weights field `key`; None (keep the random
  initialisation, and say so) when the file is absent and `config.random_init_fallback` is set,
  as `runlocal` and `minibench` runs do. Any other run stops with the file, its source and where
  to put it."""
  cache_dir = config.get("model", {}).get("weights_dir") or None
  try:
    return resolve(value, cache_dir)
  except FileNotFoundError as e:
    if not config.get("random_init_fallback", False):
      raise
    from iab_jax import console

    console.say("%s=%r: weights not found, so random initialisation (%s)", key, value,
                "random_init_fallback is set by runlocal/minibench")
    del e
    return None


def file_identity(path: str) -> str:
  """A cheap, content-based name for a weights file: size and the sha256 of its first and last
  MiB (a different file of the same size differs there in practice), for cache keys."""
  import hashlib

  size = os.path.getsize(path)
  digest = hashlib.sha256(str(size).encode())
  with open(path, "rb") as f:
    digest.update(f.read(1 << 20))
    if size > 2 << 20:
      f.seek(-(1 << 20), os.SEEK_END)
      digest.update(f.read())
  return f"{os.path.basename(path)}:{size}:{digest.hexdigest()[:16]}"


def is_flax_file(path: str) -> bool:
  from safetensors import safe_open

  with safe_open(path, framework="np") as f:
    return (f.metadata() or {}).get("format") == FLAX_FORMAT


def load_into(variables: dict[str, Any], module, path: str) -> dict[str, Any]:
  """`variables` with the weights of `path`: a reference-layout file through the model module's
  `load_pretrained`, or a file `--convert` wrote, merged as it is. Either way the module's
  classifier (its `HEAD`, when it has one) stays freshly initialised if its size differs."""
  from flax import traverse_util

  from iab_jax.models import _loading

  if os.path.isfile(path) and is_flax_file(path):
    flat = _loading.read_safetensors(path, "a safetensors file")
    converted = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return _loading.merge(variables, converted, path=path, head=getattr(module, "HEAD", None))
  return module.load_pretrained(variables, path)


def convert(name: str, src: str, out_dir: str) -> str:
  """Converts a reference-layout safetensors file of checkpoint `name` to a Flax-layout file."""
  import jax
  from flax import traverse_util
  from safetensors.numpy import save_file

  if not src.endswith(".safetensors"):
    raise ValueError(f"{src}: not a safetensors file; convert a .pth/.bin first with "
                     f"`python -m data_prep.convert_weights --src {src} --out FILE.safetensors` "
                     "(needs torch)")
  ckpt = get(name)
  module = importlib.import_module(f"iab_jax.models.{ckpt.module}")
  if not hasattr(module, "Model"):
    raise ValueError(f"{name} is not one network's weights file ({ckpt.layout}); load it with "
                     f"iab_jax.models.{ckpt.module}.{ckpt.loader}")
  model = module.Model(num_classes=0, **ckpt.arch) if "num_classes" in getattr(
      module.Model, "__dataclass_fields__", {}) else module.Model(**ckpt.arch)
  height, width = _input_size(ckpt.preprocess)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               np.zeros((1, height, width, 3), np.float32),
                                               train=False))
  loader = getattr(module, ckpt.loader)
  # Some loaders read the architecture off the params tree, others take it as keywords.
  accepted = inspect.signature(loader).parameters
  takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
  arch = {k: v for k, v in ckpt.arch.items() if takes_any or k in accepted}
  variables = loader(dict(abstract), src, **arch)
  flat = traverse_util.flatten_dict({k: v for k, v in variables.items()})
  arrays = {"/".join(k): np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.safetensors")
  save_file(arrays, path, metadata={"format": FLAX_FORMAT, "name": name,
                                    "module": ckpt.module, "arch": json.dumps(ckpt.arch),
                                    "source": ckpt.source})
  return path


def _input_size(preprocess: str) -> tuple[int, int]:
  """The image size a checkpoint's preprocessing ends at (its last crop)."""
  from iab_jax.data import transforms

  size = (224, 224)
  for name, args, kwargs in transforms.parse(preprocess).ops:
    if name == "central_crop":
      h = args[0] if args else kwargs["size"]
      w = args[1] if len(args) > 1 and args[1] is not None else kwargs.get("width") or h
      size = (int(h), int(w))
  return size


def listing() -> str:
  rows = [("name", "model", "source", "file", "preprocess")]
  for ckpt in sorted(registry().values(), key=lambda c: (c.module, c.name)):
    rows.append((ckpt.name, ckpt.module, ckpt.source, ckpt.filename, ckpt.preprocess))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                   for r in rows)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m iab_jax.weights",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--list", action="store_true", help="print every supported checkpoint")
  parser.add_argument("--convert", metavar="NAME", help="checkpoint name to convert")
  parser.add_argument("--src", help="reference-layout safetensors file of NAME")
  parser.add_argument("--out", help="directory for <NAME>.safetensors in Flax layout")
  parser.add_argument("--fetch", metavar="NAME", help="download NAME into the cache (online)")
  parser.add_argument("--cache_dir", default=None)
  args = parser.parse_args(argv)
  try:
    if args.list:
      print(listing())
    elif args.convert:
      if not args.src or not args.out:
        parser.error("--convert needs --src and --out")
      print(f"wrote {convert(args.convert, args.src, args.out)}")
    elif args.fetch:
      print(load(args.fetch, args.cache_dir))
    else:
      parser.error("say --list, --convert NAME --src FILE --out DIR, or --fetch NAME")
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
