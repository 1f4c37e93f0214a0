"""The authors' released checkpoints as iab_jax runs, testable in JAX without training.

  python -m data_prep.import_official --list
  python -m data_prep.import_official --method dct_cnn --src dct_default.pth --out runs/dct_official
  python -m iab_jax.evaluate --workdir runs/dct_official --config.input.data_dir=data/iab

The official benchmark saves `training/ckpt/<m>/<m>_{default,split1,split2,split3}.pth`: a dict
whose `model_state_dict` is the attributor's state dict (METHODS.md §0.9). The file is loaded with
torch `weights_only=True` (never unpickled as code), every tensor becomes float32 numpy (the
official CLIP tensors are fp16), and the method's `import_official` maps exactly the keys of the
official layout (data_prep/official_layouts/<m>_state_dict.txt) into our model: a missing, extra
or mis-shaped key stops with one line naming it. The run directory it writes holds the config of
`configs/<m>.py:<task>,official` (the task from the file name: default -> standard, split1..3 ->
semantic1..3), one checkpoint and imported.json (the 23 official classes in label order, where the
file came from, what to know about it), so `python -m iab_jax.evaluate` tests it at the 7 levels.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
from typing import Any, Sequence

import numpy as np

from data_prep import _cli


@dataclasses.dataclass(frozen=True)
class Importable:
  method: str  # our registry name
  official: str  # the official code's name (file and folder names)
  importer: str  # "module:function"
  layout: str  # data_prep/official_layouts/<file>
  note: str = ""


IMPORTABLE: dict[str, Importable] = {i.method: i for i in (
    Importable("resnet50", "resnet50", "iab_jax.methods.classifier:import_official_resnet50",
               "resnet50_state_dict.txt"),
    Importable("dct_cnn", "dct", "iab_jax.methods.dct_cnn:import_official", "dct_state_dict.txt"),
    Importable("clip_lr", "clip_lr", "iab_jax.methods.clip_lr:import_official",
               "clip_lr_state_dict.txt",
               "the file has no fitted scaler or logistic regression (the official FIXME): the "
               "CLIP tower is imported and the head refitted from features"),
    Importable("hifi_net", "hifi_net", "iab_jax.methods.hifi_net:import_official",
               "hifi_net_state_dict.txt"),
    Importable("defl", "defl", "iab_jax.methods.defl:import_official", "defl_state_dict.txt"),
    Importable("dna_det", "dna", "iab_jax.methods.dna_det:import_official",
               "dna_state_dict.txt"),
    Importable("repmix", "repmix", "iab_jax.methods.repmix:import_official",
               "repmix_state_dict.txt"),
    Importable("patch_forensics", "patch", "iab_jax.methods.patch_forensics:import_official",
               "patch_state_dict.txt"),
    Importable("patchcraft", "patchcraft", "iab_jax.methods.patchcraft:import_official",
               "patchcraft_state_dict.txt"),
    Importable("ssp", "ssp", "iab_jax.methods.ssp:import_official", "ssp_state_dict.txt"),
)}
SPLITS = {"default": "standard", "split1": "semantic1", "split2": "semantic2",
          "split3": "semantic3"}


def find(name: str) -> Importable:
  """An importable method by our name or the official one (`dct` for dct_cnn)."""
  for entry in IMPORTABLE.values():
    if name in (entry.method, entry.official):
      return entry
  known = ", ".join(f"{e.method} ({e.official})" if e.official != e.method else e.method
                    for e in IMPORTABLE.values())
  raise ValueError(f"--method {name!r}: no official checkpoint importer; known: {known}")


def layout(entry: Importable) -> dict[str, tuple[int, ...]]:
  """The official state dict's keys and shapes, from its layout file."""
  from iab_jax.methods import official

  return official.read_layout(entry.layout)


def task_from_filename(path: str) -> str | None:
  """'dct_split2.pth' -> 'semantic2'; None when the name does not say."""
  match = re.search(r"_(default|split[123])\.pth?$", os.path.basename(path))
  return SPLITS[match.group(1)] if match else None


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(state dict as float32 numpy, the checkpoint's other entries that are plain values)."""
  import torch

  if not os.path.isfile(path):
    raise FileNotFoundError(f"--src {path!r}: no such file")
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - a corrupt or non-torch file: one line
    raise ValueError(f"--src {path!r}: not a torch checkpoint loadable with weights_only=True "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
  if not isinstance(checkpoint, dict):
    raise ValueError(f"--src {path!r}: expected a dict, got {type(checkpoint).__name__}")
  state = checkpoint.get("model_state_dict", checkpoint)
  extra = {k: v for k, v in checkpoint.items()
           if k in ("epoch", "best_metrics") and isinstance(v, (int, float, dict))}
  out = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"--src {path!r}: state dict entry {key!r} is not a tensor")
    out[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else (
        value.detach().numpy())
  return out, _plain(extra)


def _plain(value):
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (int, float, str, bool)) or value is None:
    return value
  try:
    return float(value)
  except (TypeError, ValueError):
    return str(value)


def check_layout(state: dict[str, np.ndarray], entry: Importable) -> None:
  """One line naming the first missing, extra or mis-shaped key against the official layout."""
  from iab_jax.methods import official

  official.check_state(state, layout(entry), entry.method)


def import_run(method: str, src: str, out: str, task: str | None = None,
               data_dir: str = "data/iab") -> dict[str, Any]:
  """Writes the run directory `out` from the official checkpoint `src`; its import record."""
  import jax
  import jax.numpy as jnp

  from iab_jax import checkpointing, console, methods, runs, sharding
  from iab_jax.data import generators

  entry = find(method)
  task = task or task_from_filename(src) or "standard"
  if task not in SPLITS.values():
    raise ValueError(f"--task {task!r}: the official checkpoints are for "
                     f"{', '.join(SPLITS.values())}")
  if os.path.exists(os.path.join(out, runs.CHECKPOINTS)):
    raise ValueError(f"--out {out!r} already holds a run; choose a new directory")
  state, extra = read_state_dict(src)
  check_layout(state, entry)
  config = importlib.import_module(f"configs.{entry.method}").get_config(
      f"{task},official,data={data_dir}")
  classes = list(generators.OFFICIAL_MODEL_ORDER)
  module_name, function = entry.importer.split(":")
  os.makedirs(out, exist_ok=True)
  imported = getattr(importlib.import_module(module_name), function)(state, config, out)
  for key, value in imported.overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  record = {"format": "iab_jax.imported", "version": 1, "method": entry.method,
            "official_name": entry.official, "source": os.path.abspath(src), "task": task,
            "classes": classes, "checkpoint": extra, "overrides": imported.overrides,
            "notes": list(imported.notes) + ([entry.note] if entry.note else [])}
  with open(os.path.join(out, runs.CONFIG_JSON), "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  if imported.variables is not None:
    method_obj = methods.get(entry.method)(config, classes)
    _, eval_transform = method_obj.transforms()
    from iab_jax.data import transforms

    # What the evaluation transform makes of an image: an array or a dict of views.
    made = transforms.parse(eval_transform)(np.full((256, 256, 3), 127, np.uint8),
                                            np.random.default_rng(0))
    example = jax.tree.map(lambda x: jnp.zeros((1, *x.shape), jnp.float32), made)
    expected = jax.eval_shape(lambda: method_obj.init(jax.random.key(0), example,
                                                      pretrained=False))
    _same_structure(expected, imported.variables, entry.method)
    mesh = sharding.make_mesh()
    variables = sharding.replicate(imported.variables, mesh)
    ckpt = checkpointing.Checkpoints(os.path.join(out, runs.CHECKPOINTS), asynchronous=False)
    best = (extra.get("best_metrics") or {}).get("acc")
    ckpt.save(1, {"params": variables["params"],
                  "model_state": {k: v for k, v in variables.items() if k != "params"},
                  "opt_state": {}, "step": np.int32(1)}, None,
              {"phase": 0, "epoch": int(extra.get("epoch", 0) or 0), "step_in_epoch": 0,
               "val_accuracy": best, "imported_from": os.path.abspath(src)},
              metrics={checkpointing.BEST_METRIC: float(best or 0.0)})
    ckpt.close()
  with open(os.path.join(out, runs.IMPORTED_JSON), "w") as f:
    json.dump(record, f, indent=1)
  for note in record["notes"]:
    console.say("note: %s", note)
  return record


def _same_structure(expected, variables, method: str) -> None:
  import jax

  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(p): tuple(np.shape(v))
         for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  for key in sorted(set(want) | set(got)):
    if want.get(key) != got.get(key):
      raise ValueError(f"{method}: the imported variables do not fit the model at {key}: "
                       f"imported {got.get(key)}, model {want.get(key)}")


def list_text() -> str:
  lines = ["method           official    expected files                                       layout keys"]
  for e in IMPORTABLE.values():
    files = ", ".join(f"{e.official}_{s}.pth" for s in SPLITS)
    lines.append(f"{e.method:<16} {e.official:<11} {files:<52} {len(layout(e))}")
    if e.note:
      lines.append(f"{'':<16} note: {e.note}")
  lines.append("From the authors' release (Harvard Dataverse doi:10.7910/DVN/7IEAXP, GitHub release "
               "tag 1 of mttry/ImageAttributionBench): training/ckpt/<official>/<file>.")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--list", action="store_true", help="the methods this imports, and files")
  parser.add_argument("--method", help="our name or the official one (e.g. dct_cnn or dct)")
  parser.add_argument("--src", help="the official .pth file")
  parser.add_argument("--out", help="the run directory to write")
  parser.add_argument("--task", default=None, help="standard|semantic1|2|3 (default: from the "
                      "file name: default, split1..3)")
  parser.add_argument("--data", default="data/iab", help="the dataset the run is tested on "
                      "(recorded in its config; evaluate's --config.input.data_dir overrides)")
  args = parser.parse_args(argv)
  if args.list:
    print(list_text())
    return 0
  for flag in ("method", "src", "out"):
    if not getattr(args, flag):
      raise _cli.fail(f"--{flag} is required (or --list)")
  try:
    find(args.method)  # an unknown method fails before torch is imported
    record = import_run(args.method, args.src, args.out, args.task, args.data)
  except (ValueError, FileNotFoundError) as e:
    raise _cli.fail(str(e).splitlines()[0]) from None
  print(f"wrote {args.out}: {record['method']} on {record['task']}; test it with "
        f"python -m iab_jax.evaluate --workdir {args.out} --config.input.data_dir=DIR")
  return 0


if __name__ == "__main__":
  sys.exit(_cli.run(main))
