"""The commands as a user meets them, on a folder of their own images of mixed sizes and formats.

One small run trains through the real command line (quickstart config, group task) and serves
the tests of what comes after: rerunning a finished run, `iab_jax.evaluate` on other splits and
other data, `iab_jax.attribute` on files. Other tests check that bad input fails fast, in one
line, and leaves nothing behind.
"""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("real", "SDXL", "FLUX")
GROUPS = ("prompt_0", "prompt_1", "prompt_2", "prompt_3")
ABSL_INFO = re.compile(r"^I\d{4} ", re.MULTILINE)  # absl's INFO line prefix, e.g. "I1201 22:00:05"


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  for key in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
    env.pop(key, None)  # the commands must quiet the libraries themselves
  return env


def _run(module, *args, timeout=300, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _write_folders(root, classes=CLASSES, seed=0):
  """root/{class}/{prompt}/img{k}: sizes 40-90 px, real as JPEG, generators as PNG."""
  rng = np.random.default_rng(seed)
  paths = []
  for c, name in enumerate(classes):
    for g, group in enumerate(GROUPS):
      for k in range(5):
        w, h = (int(v) for v in rng.integers(40, 91, 2))
        base = np.full((h, w, 3), 40 * g + 30, np.uint8)
        noise = rng.integers(0, 40 + 60 * c, (h, w, 3))  # a class-dependent texture
        image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        ext = "jpg" if name == "real" else "png"
        path = os.path.join(root, name, group, f"img{k}.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, quality=90) if ext == "jpg" else image.save(path)
        paths.append(path)
  return paths


def _ingest_and_split(src, out, *protocols):
  done = _run("data_prep.ingest", "--src", src, "--out", out, "--layout", "folders",
              "--group_from", "dirname", "--jobs", "1", "--quiet")
  assert done.returncode == 0, done.stderr[-2000:]
  for protocol in protocols:
    extra = ["--test_groups", "1", "--val_groups", "1"] if protocol == "group" else []
    done = _run("data_prep.split", "--data", out, "--protocol", protocol, "--quiet", *extra)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
  base = tmp_path_factory.mktemp("own")
  src, data = str(base / "images"), str(base / "data")
  _write_folders(src)
  _ingest_and_split(src, data, "standard", "group")
  return src, data


def _train_args(data, workdir, *extra):
  return ("--config=configs/quickstart.py:group", f"--workdir={workdir}",
          f"--config.input.data_dir={data}", "--config.input.batch_size=8",
          "--config.num_epochs=2", "--config.log_every_steps=1",
          "--config.evals.test.levels=0,3", *extra)


@pytest.fixture(scope="module")
def trained(own_data, tmp_path_factory):
  """A run of the quickstart config on the user's folders, group task, through the CLI."""
  _, data = own_data
  workdir = str(tmp_path_factory.mktemp("run") / "group")
  done = _run("iab_jax.main", *_train_args(data, workdir), timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir, done


def test_mixed_sizes_train_with_the_shipped_config(trained, own_data):
  workdir, done = trained
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["task"] == "group" and sorted(results["classes"]) == sorted(CLASSES)
  clean = results["evals"]["test"]["levels"]["0"]
  # Per-group accuracy, like per-semantic: the test side holds exactly one whole group.
  assert len(clean["per_group_accuracy"]) == 1
  (group, count), = clean["per_group_count"].items()
  assert group in GROUPS and count == clean["num_examples"] == 15
  assert set(results["evals"]["test"]["levels"]) == {"0", "3"}
  # What the result must beat, recorded beside it.
  assert results["baselines"]["chance"] == pytest.approx(1 / 3)
  metadata = results["baselines"]["metadata"]
  assert 0 <= metadata["accuracy"] <= 1 and metadata["num_test"] == 15
  assert "| Small CNN (group split) |" in done.stdout and "Baselines" in done.stdout


def test_runs_say_what_they_do_and_libraries_stay_quiet(trained):
  _, done = trained
  err = done.stderr
  assert "compiling the train step" in err and re.search(r"compiled in \d+\.\d s", err)
  assert re.search(r"step \d+/\d+ \(train epoch \d/2\): loss", err)  # plain lines: no terminal
  assert "val accuracy" in err and "wrote" in err
  for noise in ("Unable to initialize backend", "oneDNN", "absl::InitializeLog",
                "font_manager", "[Hyperparameters]"):
    assert noise not in err, noise
  assert not ABSL_INFO.search(err), ABSL_INFO.search(err)


def test_rerun_of_a_finished_run_shows_its_results(trained, own_data):
  workdir, first = trained
  _, data = own_data
  done = _run("iab_jax.main", *_train_args(data, workdir))
  assert done.returncode == 0, done.stderr[-2000:]
  assert "has finished" in done.stderr and "compiling" not in done.stderr
  assert done.stdout == first.stdout  # the same table, from results.json
  # --retest tests again; --verbosity=0 brings absl's INFO lines back.
  done = _run("iab_jax.main", *_train_args(data, workdir, "--retest", "--verbosity=0"))
  assert done.returncode == 0, done.stderr[-2000:]
  assert "compiled the test prediction step" in done.stderr
  assert ABSL_INFO.search(done.stderr)


def test_evaluate_on_another_manifest(trained, own_data):
  workdir, _ = trained
  _, data = own_data
  done = _run("iab_jax.evaluate", f"--workdir={workdir}", "--config.input.manifest=standard",
              "--config.evals.test.levels=0", "--name=std")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "results_std.json")) as f:
    results = json.load(f)
  with open(os.path.join(data, "splits", "standard.json")) as f:
    test_size = len(json.load(f)["splits"]["test"])
  assert results["manifest"]["name"] == "standard" and results["evaluation"]["name"] == "std"
  assert results["evals"]["test"]["levels"]["0"]["num_examples"] == test_size
  assert results["checkpoint"]["which"] == "best"
  assert "| Small CNN (group split) |" in done.stdout


def test_evaluate_scores_any_run_as_a_detector(trained):
  """--evals detection adds the detection eval to a run whose config predates it and runs only
  that: 1 − P(real) against each generator, into results_detection.json."""
  workdir, _ = trained
  done = _run("iab_jax.evaluate", f"--workdir={workdir}", "--evals=detection",
              "--config.evals.detection.levels=0")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "results_detection.json")) as f:
    results = json.load(f)
  assert list(results["evals"]) == ["detection"]
  clean = results["evals"]["detection"]["levels"]["0"]
  assert set(clean["per_generator"]) == {"SDXL", "FLUX"}
  assert sorted(clean["trained_on"]) == ["FLUX", "SDXL"]
  assert "Detection (Clean): AP" in done.stdout
  bad = _run("iab_jax.evaluate", f"--workdir={workdir}", "--evals=nope")
  assert bad.returncode == 2 and "--evals='nope'" in bad.stderr.strip().splitlines()[-1]


def test_evaluate_on_other_data_scores_the_known_generators_only(trained, tmp_path):
  workdir, _ = trained
  src, data = str(tmp_path / "images"), str(tmp_path / "data")
  _write_folders(src, classes=CLASSES + ("NewGen",), seed=1)
  _ingest_and_split(src, data, "standard")
  done = _run("iab_jax.evaluate", f"--workdir={workdir}", f"--config.input.data_dir={data}",
              "--config.input.manifest=standard", "--config.evals.test.levels=0")
  assert done.returncode == 0, done.stderr[-3000:]
  name = "data_standard"
  with open(os.path.join(workdir, f"results_{name}.json")) as f:
    results = json.load(f)
  clean = results["evals"]["test"]["levels"]["0"]
  with open(os.path.join(data, "splits", "standard.json")) as f:
    manifest = json.load(f)
  assert len(manifest["classes"]) == 4 and len(results["classes"]) == 3
  assert clean["num_examples"] == len(manifest["splits"]["test"]) * 3 // 4
  assert set(clean["per_class_accuracy"]) == set(CLASSES)


def test_attribute_agrees_with_the_evaluation(trained, own_data, tmp_path):
  """The test split's own files through `attribute` give the run's clean test accuracy."""
  workdir, _ = trained
  src, data = own_data
  from iab_jax.data import records

  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(data, "splits", "group.json")) as f:
    test = json.load(f)["splits"]["test"]
  ds = records.Dataset(data)
  keys, generators = ds.column("key")[test], ds.column("generator")[test]
  files = [os.path.join(src, k) for k in keys]
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  out = str(tmp_path / "attr")
  done = _run("iab_jax.attribute", f"--workdir={workdir}", *files, str(bad),
              str(tmp_path / "missing.png"), "--out", out, "--top_k", "2")
  assert done.returncode == 0, done.stderr[-3000:]
  with open(out + ".json") as f:
    attributed = json.load(f)
  assert [p["path"] for p in attributed["predictions"]] == files
  top1 = [p["top"][0]["class"] for p in attributed["predictions"]]
  accuracy = np.mean([t == g for t, g in zip(top1, generators)])
  assert accuracy == pytest.approx(results["evals"]["test"]["levels"]["0"]["accuracy"])
  for p in attributed["predictions"]:
    assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-4)
  reasons = {os.path.basename(f["path"]): f["reason"] for f in attributed["failed"]}
  assert set(reasons) == {"broken.png", "missing.png"}
  assert reasons["broken.png"] and "no such file" in reasons["missing.png"]
  with open(out + ".csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["path", "top1", "p1", "top2", "p2"] and len(rows) == len(files) + 1
  assert "skipped" in done.stdout

  # The Python API on a folder, bytes and arrays.
  from iab_jax.attribute import Attributor

  attributor = Attributor(workdir)
  images = [files[0], open(files[1], "rb").read(), np.asarray(Image.open(files[2]).convert("RGB"))]
  probabilities = attributor.predict(images)
  assert probabilities.shape == (3, 3)
  expected = [attributed["predictions"][i]["probabilities"] for i in range(3)]
  np.testing.assert_allclose(probabilities, [[e[c] for c in attributor.classes] for e in expected],
                             rtol=1e-5, atol=1e-6)
  assert [t[0][0] for t in attributor.top_k(probabilities, 1)] == top1[:3]
  with pytest.raises(ValueError, match="not an image"):
    attributor.predict([b"not an image"])


def test_mixed_shapes_end_the_run_promptly_in_one_line(own_data, tmp_path):
  """A transform without a fixed size on mixed sizes: exit 2 within seconds, no traceback, no
  leftover workdir, with and without worker processes."""
  _, data = own_data
  for workers in ("0", "1"):
    workdir = str(tmp_path / f"w{workers}")
    done = _run("iab_jax.main", *_train_args(data, workdir, "--config.input.transform=flip_lr",
                                             f"--config.input.worker_count={workers}"),
                timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: transform 'flip_lr' yields images of different shapes")
    assert "Traceback" not in done.stderr
    assert not os.path.exists(workdir)


def test_quickstart_builds_the_minibench_only_at_its_own_place(tmp_path):
  empty = tmp_path / "mine"
  empty.mkdir()
  done = _run("iab_jax.main", "--config=configs/quickstart.py:standard",
              f"--workdir={tmp_path / 'run'}", f"--config.input.data_dir={empty}")
  assert done.returncode == 2
  assert done.stderr.startswith("error: config.input.data_dir=") and "holds no dataset" in done.stderr
  assert os.listdir(empty) == [] and not (tmp_path / "run").exists()


CHECK_WITHOUT_JAX = r"""
import sys
from configs import quickstart
from iab_jax import cli
config = quickstart.get_config("standard")
{edit}
try:
  cli.validate(config, sys.argv[1])
except Exception as e:
  print(type(e).__name__, e)
print("jax" in sys.modules, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("edit, expected", [
    ("config.model.dtype = 'float8'",
     "config.model.dtype='float8'; expected one of float32, bfloat16, float16"),
    ("config.input.data_dir = '/nonexistent/data'", "holds no dataset"),
    ("config.input.transform = 'resize(256'", "config.input.transform: cannot parse"),
    ("config.input.sixteen_bit = 'round'", "config.input.sixteen_bit='round'"),
    ("config.model.name = 'resnet5'", "config.model.name='resnet5'; expected one of"),
])
def test_bad_config_fails_before_jax_and_tensorflow_load(tmp_path, edit, expected):
  done = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_JAX.format(edit=edit),
                         str(tmp_path / "w")], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=120)
  lines = done.stdout.strip().splitlines()
  assert expected in lines[0], done.stdout + done.stderr
  assert lines[-1] == "False False"


def test_list_fields_can_be_overridden(tmp_path):
  done = _run("iab_jax.main", "--config=configs/small_cnn.py:standard", f"--workdir={tmp_path}/w",
              "--config.evals.test.levels=0,3,9")
  assert done.returncode == 2
  assert "error: config.evals.test.levels=(0, 3, 9); expected levels in 0..6" in done.stderr
  done = _run("iab_jax.main", "--config=configs/small_cnn.py:standard", f"--workdir={tmp_path}/w",
              "--config.evals.test.levels=0,3", f"--config.input.data_dir={tmp_path}/none")
  assert done.returncode == 2 and "holds no dataset" in done.stderr  # the override was taken
  assert not os.path.exists(f"{tmp_path}/w")


def test_official_option():
  from configs import resnet50

  config = resnet50.get_config("semantic1,official")
  assert config.official and config.input.manifest == "semantic_cat_official"
  assert config.input.sixteen_bit == "clip" and config.test_checkpoint == "last"
  plain = resnet50.get_config("standard")
  assert not plain.official and plain.input.manifest == "" and plain.test_checkpoint == "best"
  with pytest.raises(ValueError, match="official"):
    resnet50.get_config("group,official")


def test_evaluate_and_attribute_errors_are_one_line(trained, tmp_path):
  workdir, _ = trained
  for module, args, expected in (
      ("iab_jax.evaluate", ["--checkpoint=nope"], "--checkpoint='nope'; expected best, last"),
      ("iab_jax.evaluate", ["--config.input.manifest=nothere"], "manifest"),
      ("iab_jax.attribute", ["x.png", "--degradation=9"], "--degradation=9"),
  ):
    done = _run(module, f"--workdir={workdir}", *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert expected in done.stderr and "Traceback" not in done.stderr
  done = _run("iab_jax.evaluate", f"--workdir={tmp_path}/none")
  assert done.returncode == 2 and "does not exist" in done.stderr
  assert not os.path.exists(os.path.join(workdir, "results_nothere.json"))
