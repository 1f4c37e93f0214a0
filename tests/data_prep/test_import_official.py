"""data_prep.import_official: the authors' .pth files become runs that iab_jax.evaluate tests.

A checkpoint with the official DCT-CNN layout (random values, written with torch.save as the
official train.py does) is imported and evaluated end to end; the per-method numerical checks
(imported logits equal the official forward) live in tests/methods/test_<method>.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep import import_official

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _official_dct_checkpoint(path, *, drop=None, add=None, reshape=None):
  import torch

  rng = np.random.default_rng(0)
  state = {}
  for key, shape in import_official.layout(import_official.find("dct")).items():
    scale = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
    state[key] = torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))
  if drop:
    del state[drop]
  if add:
    state[add] = torch.zeros(3)
  if reshape:
    state[reshape] = torch.zeros(2, 2)
  torch.save({"model_state_dict": state, "epoch": 9, "best_metrics": {"acc": 0.5}}, path)
  return path


def test_list_names_every_importable_method_and_its_files():
  text = import_official.list_text()
  for method, official in (("resnet50", "resnet50"), ("dct_cnn", "dct"), ("clip_lr", "clip_lr"),
                           ("hifi_net", "hifi_net"), ("defl", "defl"), ("dna_det", "dna"),
                           ("repmix", "repmix"), ("patch_forensics", "patch"),
                           ("patchcraft", "patchcraft"), ("ssp", "ssp")):
    assert method in text and f"{official}_default.pth" in text and f"{official}_split3.pth" in text
  assert "no fitted scaler" in text
  # Every layout file parses, with the key counts METHODS.md §5 gives.
  counts = {m: len(import_official.layout(e)) for m, e in import_official.IMPORTABLE.items()}
  assert counts == {"resnet50": 320, "dct_cnn": 10, "clip_lr": 910, "hifi_net": 765,
                    "defl": 2070, "dna_det": 63, "repmix": 325, "patch_forensics": 54,
                    "patchcraft": 86, "ssp": 321}


def test_task_from_the_file_name():
  assert import_official.task_from_filename("x/dct_default.pth") == "standard"
  assert import_official.task_from_filename("dct_split2.pth") == "semantic2"
  assert import_official.task_from_filename("weights.pth") is None


@pytest.mark.parametrize("change, message", [
    ({"drop": "feature_extractor.fc.weight"},
     "key 'feature_extractor.fc.weight' of the official layout is missing"),
    ({"add": "fc.extra"}, "unexpected key 'fc.extra'"),
    ({"reshape": "feature_extractor.conv1.bias"},
     "key 'feature_extractor.conv1.bias' has shape (2, 2), the official layout has (3,)"),
])
def test_a_wrong_key_stops_with_one_line(tmp_path, change, message):
  src = _official_dct_checkpoint(str(tmp_path / "dct_default.pth"), **change)
  done = _run("data_prep.import_official", "--method=dct", f"--src={src}",
              f"--out={tmp_path}/run")
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().count("\n") == 0 and message in done.stderr, done.stderr


def test_bad_arguments_are_one_line(tmp_path):
  for args, message in ((["--method=nope", "--src=x", "--out=y"], "no official checkpoint importer"),
                        (["--method=dct", f"--src={tmp_path}/none.pth", "--out=y"],
                         "no such file"),
                        (["--method=dct"], "--src is required")):
    done = _run("data_prep.import_official", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_imported_dct_checkpoint_is_evaluated_at_every_level(tiny_bench, tmp_path):
  src = _official_dct_checkpoint(str(tmp_path / "dct_default.pth"))
  run = str(tmp_path / "run")
  done = _run("data_prep.import_official", "--method=dct", f"--src={src}", f"--out={run}")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(run, "imported.json")) as f:
    record = json.load(f)
  assert record["task"] == "standard" and len(record["classes"]) == 23
  assert record["checkpoint"] == {"epoch": 9, "best_metrics": {"acc": 0.5}}
  # The mini-bench shares only its real class with the official 23: those images are scored.
  done = _run("iab_jax.evaluate", f"--workdir={run}", f"--config.input.data_dir={tiny_bench}",
              "--config.input.manifest=standard", "--config.input.batch_size=8",
              "--config.input.eval_batch_size=8")
  assert done.returncode == 0, done.stderr[-3000:]
  results_file = [f for f in os.listdir(run) if f.startswith("results_")]
  with open(os.path.join(run, results_file[0])) as f:
    results = json.load(f)
  levels = results["evals"]["test"]["levels"]
  assert sorted(levels, key=int) == [str(k) for k in range(7)]
  assert results["classes"][22] == "real"
  scored = {c for c, a in levels["0"]["per_class_accuracy"].items() if a is not None}
  assert scored == {"real"}, levels["0"]["per_class_accuracy"]
