"""A run directory and what it holds, readable without JAX: its config, its results, its state.

  <workdir>/config.json      the run's config (written when training starts)
  <workdir>/results.json     the tested checkpoint's metrics (written at the end)
  <workdir>/results_<name>.json   later evaluations (python -m iab_jax.evaluate)
  <workdir>/checkpoints/     Orbax checkpoints (latest + best)

The commands use these checks before any heavy import, so that a mistake is reported within a
second: resuming a workdir under another training config is refused (naming the keys that
differ), and rerunning a finished run shows its results instead of testing it again.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import ml_collections

CONFIG_JSON = "config.json"
RESULTS_JSON = "results.json"
CHECKPOINTS = "checkpoints"

# Settings a resumed run may change: they do not alter what is trained or how.
RESUME_MAY_CHANGE = ("evals", "log_every_steps", "checkpoint_every_steps", "distributed",
                     "test_checkpoint", "input.worker_count", "input.cache",
                     "input.eval_batch_size", "input.prepare", "input.read_threads",
                     "input.prefetch_batches", "input.worker_buffer_batches")


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; tuples compare equal to the lists JSON gives back."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as the JSON the run writes (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


# Of those, the ones the test results depend on: a finished run asked for other ones is tested
# again.
RESULTS_DEPEND_ON = ("evals", "test_checkpoint")


def _under(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def _may_change(key: str) -> bool:
  return _under(key, RESUME_MAY_CHANGE)


def differences(old: dict[str, Any], new: dict[str, Any], *, training_only: bool = True
                ) -> list[str]:
  """Flat keys whose values differ between two configs (JSON dicts)."""
  a, b = flat(old), flat(new)
  return sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and not (training_only and _may_change(k)))


def read_config(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints were trained under another config.

  Restoring them would fail deep inside Orbax (another model) or, worse, silently continue a
  different recipe (another learning rate); the error names each differing key instead.
  """
  old = read_config(workdir)
  if old is None or not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
    return
  differ = differences(old, config_dict(config))
  if differ:
    o, n = flat(old), flat(config_dict(config))
    details = "; ".join(f"config.{k}: {o.get(k)!r} -> {n.get(k)!r}" for k in differ[:5])
    raise ValueError(f"config.* differs from the run in {workdir!r}, which this command would "
                     f"resume: {details}. Use a new --workdir, or the run's own config.")


IMPORTED_JSON = "imported.json"  # a run made from the authors' checkpoint (data_prep.import_official)


def run_classes(workdir: str) -> list[str] | None:
  """A run's classes in label order: from its results, or from its import record."""
  for name in (RESULTS_JSON, IMPORTED_JSON):
    found = (read_results(os.path.join(workdir, name)) or {}).get("classes")
    if found:
      return list(found)
  return None


def read_results(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def finished(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """The results of this very run when it has already finished, else None.

  Finished means results.json exists and was made under the same config, evaluations included
  (asking for other levels, evaluators or checkpoint tests it again; settings that change neither
  the training nor the results, such as logging and input reading, may differ).
  """
  results = read_results(os.path.join(workdir, RESULTS_JSON))
  if not results or "config" not in results:
    return None
  differ = differences(results["config"], config_dict(config), training_only=False)
  return None if any(not _may_change(k) or _under(k, RESULTS_DEPEND_ON) for k in differ) else results


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's config from its config.json, as a ConfigDict that overrides can be applied to."""
  data = read_config(workdir)
  if data is None:
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"--workdir {workdir!r} does not exist")
    raise FileNotFoundError(f"--workdir {workdir!r} holds no run ({CONFIG_JSON} missing)")
  return ml_collections.ConfigDict(_tuples(data))


def _tuples(value):
  """Lists from JSON back to tuples, as the config files write them (and overrides expect)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def remove_if_unstarted(workdir: str, existed: bool) -> bool:
  """Deletes a workdir this command created when the run failed before its first checkpoint, so
  that failed runs leave no empty directories behind. Returns whether it did."""
  if existed or not os.path.isdir(workdir):
    return False
  checkpoints = os.path.join(workdir, CHECKPOINTS)
  if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
    return False
  shutil.rmtree(workdir, ignore_errors=True)
  return True
