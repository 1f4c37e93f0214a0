"""The supervised loop end to end on a tiny mini-bench: learning, devices, resume, best checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import quickstart
from iab_jax import main as main_lib
from iab_jax.trainers import supervised

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHANCE = 1 / 7


def _config(data_dir, task="standard", **overrides):
  config = quickstart.get_config(task)
  config.input.data_dir = data_dir
  config.input.prepare = ""
  config.num_epochs = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 5
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _flags(config_overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in config_overrides.items()]


def _cli(data_dir, workdir, *extra, env_extra=None, task="standard"):
  """The command line of a run equal to `_config(data_dir)`."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  args = [sys.executable, "-m", "iab_jax.main", f"--config=configs/quickstart.py:{task}",
          f"--workdir={workdir}", f"--config.input.data_dir={data_dir}", "--config.input.prepare=",
          "--config.num_epochs=3", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=5", *extra]
  return args, env


def _by_step(workdir, key: str) -> dict[int, float]:
  """A scalar by step from metrics.jsonl; a step logged twice (before and after a resume)
  keeps its last value."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if key in row:
        out[row["step"]] = row[key]
  return out


def _losses(workdir) -> dict[int, float]:
  return _by_step(workdir, "train/loss")


@pytest.fixture(scope="module")
def reference_run(tiny_bench, tmp_path_factory):
  """One uninterrupted run on one device, in this process."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  results = main_lib.run(_config(tiny_bench), workdir)
  return workdir, results


def test_learns_and_writes_results(reference_run):
  workdir, results = reference_run
  with open(os.path.join(workdir, supervised.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["format"] == "iab_jax.results" and saved["task"] == "standard"
  assert saved["method"] == "small_cnn" and saved["method_display"] == "Small CNN"
  assert len(saved["classes"]) == 7 and saved["classes"][0] == "real"
  assert saved["manifest"]["name"] == "standard" and len(saved["manifest"]["digest"]) == 64
  test = saved["evals"]["test"]
  assert sorted(test["levels"], key=int) == [str(k) for k in range(7)]
  clean = test["levels"]["0"]
  assert clean["num_examples"] == test["num_examples"]
  assert np.sum(clean["confusion"]) == clean["num_examples"]
  assert clean["accuracy"] > 3 * CHANCE, clean["accuracy"]
  degraded = [test["levels"][str(k)]["accuracy"] for k in range(1, 7)]
  assert test["mean_degraded_accuracy"] == pytest.approx(np.mean(degraded))
  assert set(clean["per_semantic_accuracy"]) == {"cat", "FFHQ", "COCO", "ImageNet-1k"}
  # The tested checkpoint is the best epoch by validation accuracy, not the last.
  vals = _by_step(workdir, "val/accuracy")
  assert len(vals) == 3
  assert saved["checkpoint"]["val_accuracy"] == max(vals.values())
  assert saved["checkpoint"]["step"] == max(vals, key=lambda s: (vals[s], -s))
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, max(losses) + 1))  # logged every step
  assert np.mean(list(losses.values())[-5:]) < np.mean(list(losses.values())[:5])
  for name in ("config.json", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, name))
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir))


def test_eight_devices_follow_the_one_device_loss_curve(reference_run, tiny_bench, tmp_path):
  """Data parallelism over 8 devices computes the same global-batch step (batch norm included)."""
  workdir = str(tmp_path / "eight")
  args, env = _cli(tiny_bench, workdir,
                   env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, supervised.RESULTS_JSON)) as f:
    assert json.load(f)["devices"]["count"] == 8
  one, eight = _losses(reference_run[0]), _losses(workdir)
  assert sorted(one) == sorted(eight)
  steps = sorted(one)
  np.testing.assert_allclose([eight[s] for s in steps], [one[s] for s in steps], rtol=2e-3,
                             atol=2e-4)


def _wait_for_checkpoint(workdir, proc, min_step, timeout=300):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError("the run ended before it could be killed")
    if os.path.isdir(ckpt_dir):
      steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()]
      if steps and max(steps) >= min_step:
        return max(steps)
    time.sleep(0.02)
  raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_ends_with_identical_metrics(reference_run, tiny_bench, tmp_path):
  workdir = str(tmp_path / "killed")
  args, env = _cli(tiny_bench, workdir)
  proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    _wait_for_checkpoint(workdir, proc, min_step=10)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert not os.path.exists(os.path.join(workdir, supervised.RESULTS_JSON))
  done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resuming from step" in done.stderr
  with open(os.path.join(workdir, supervised.RESULTS_JSON)) as f:
    resumed = json.load(f)
  reference = reference_run[1]
  assert resumed["checkpoint"] == reference["checkpoint"]
  assert resumed["evals"] == reference["evals"]  # exactly: every metric, every level
  assert _losses(workdir) == _losses(reference_run[0])


def test_rerun_of_a_finished_run_trains_no_further(reference_run, tiny_bench, tmp_path):
  import shutil

  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_run[0], workdir)
  results = main_lib.run(_config(tiny_bench), workdir)
  assert results["checkpoint"] == reference_run[1]["checkpoint"]
  assert results["evals"] == reference_run[1]["evals"]


def test_semantic_task_tests_on_the_other_classes(tiny_bench, tmp_path):
  config = _config(tiny_bench, "semantic1", num_epochs=1, checkpoint_every_steps=0)
  config.evals.test.levels = [0, 3]
  results = main_lib.run(config, str(tmp_path))
  assert results["task"] == "semantic:cat" and results["train_semantic"] == "cat"
  test = results["evals"]["test"]
  assert set(test["levels"]) == {"0", "3"} and test["mean_degraded_accuracy"] is None
  assert set(test["levels"]["0"]["per_semantic_accuracy"]) == {"FFHQ", "COCO", "ImageNet-1k"}


def test_bfloat16_compute(tiny_bench, tmp_path):
  config = _config(tiny_bench, num_epochs=1, checkpoint_every_steps=0)
  config.model.dtype = "bfloat16"
  config.evals.test.levels = [0]
  results = main_lib.run(config, str(tmp_path))
  assert np.isfinite(list(_losses(str(tmp_path)).values())).all()
  assert results["evals"]["test"]["levels"]["0"]["accuracy"] > CHANCE / 2


def test_two_processes_follow_the_one_device_loss_curve(reference_run, tiny_bench, tmp_path):
  """The same command on two hosts (jax.distributed on 127.0.0.1): each reads half of every
  global batch, and together they take the one-device run's steps."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "two")
  procs = []
  for i in range(2):
    args, env = _cli(tiny_bench, workdir, "--distributed",
                     f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}")
    procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  with open(os.path.join(workdir, supervised.RESULTS_JSON)) as f:
    results = json.load(f)
  assert results["devices"] == {"count": 2, "processes": 2, "platform": "cpu"}
  one, two = _losses(reference_run[0]), _losses(workdir)
  steps = sorted(one)
  assert sorted(two) == steps
  np.testing.assert_allclose([two[s] for s in steps], [one[s] for s in steps], rtol=2e-3,
                             atol=2e-4)
  ref = reference_run[1]["evals"]["test"]["levels"]
  for level, m in results["evals"]["test"]["levels"].items():
    assert abs(m["accuracy"] - ref[level]["accuracy"]) <= 0.02


def test_resnet_method_starts_from_pretrained_weights(tiny_bench, tmp_path):
  """configs/resnet50.py's path through the loop: a (small) torchvision-layout safetensors file
  initialises the network, and the head over the dataset's 7 classes starts fresh."""
  from safetensors.numpy import save_file

  from configs import resnet50
  from tests.models.test_resnet import torchvision_state

  state = torchvision_state(stage_sizes=(1, 1, 1, 1), width=8, num_classes=1000)
  weights = str(tmp_path / "tiny_resnet.safetensors")
  save_file(state, weights)
  config = resnet50.get_config(f"standard,runlocal,data={tiny_bench}")
  config.input.transform = config.input.eval_transform = "resize(32)|normalize('imagenet')"
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.width = 8
  config.model.pretrained = weights
  config.evals.test.levels = [0]
  results = main_lib.run(config, str(tmp_path / "run"))
  assert results["method_display"] == "ResNet-50" and results["checkpoint"]["epoch"] == 1
  assert results["evals"]["test"]["levels"]["0"]["num_examples"] > 0

  config.model.pretrained = str(tmp_path / "absent.safetensors")
  with pytest.raises(main_lib.ConfigError, match="absent.safetensors': no such file"):
    main_lib.run(config, str(tmp_path / "run2"))  # before any work: no workdir, no compilation
  assert not os.path.exists(tmp_path / "run2")


def test_train_step_makes_no_implicit_transfers(tiny_bench):
  """Inside the loop, batches go to devices only through explicit global-array assembly and
  nothing comes back to the host until a logging step asks."""
  import jax

  from iab_jax import methods, optimizers, sharding, tasks

  config = _config(tiny_bench)
  data = tasks.load(config.input, tasks.parse_task("standard"))
  method = methods.get("small_cnn")(config, data.classes)
  mesh = sharding.make_mesh()
  images = np.zeros((32, 64, 64, 3), np.float32)
  variables = sharding.replicate(method.init(jax.random.key(0), images[:1]), mesh)
  params = variables.pop("params")
  phase = method.phases()[0]
  tx = optimizers.make(phase.optimizer, 10, 10)
  state = {"params": params, "model_state": variables,
           "opt_state": jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params),
           "step": sharding.replicate(np.int32(0), mesh)}
  key = sharding.replicate(jax.random.key_data(jax.random.key(1)), mesh)
  step_fn = supervised.make_train_step(method, tx, phase, mesh)
  labels = np.arange(32, dtype=np.int32) % 7
  with jax.transfer_guard("disallow"):
    for _ in range(3):
      batch = sharding.global_batch({"image": images, "label": labels}, mesh)
      state, measured = step_fn(state, batch, key)
  assert int(sharding.to_host(state["step"])) == 3


class TwoPhase(__import__("iab_jax.methods.classifier", fromlist=["Classifier"]).Classifier):
  """A two-phase recipe (as DNA-Det's): a warm-up phase that does not compete for the best
  checkpoint, then the attribution phase with its own optimizer."""

  def phases(self):
    from iab_jax.methods import base

    return [base.Phase("warmup", 1, {"name": "sgd", "learning_rate": 0.01}, select_best=False),
            base.Phase("main", 2, {"name": "adam", "learning_rate": 3e-3})]


def test_multi_phase_recipe_and_resume_at_the_phase_boundary(tiny_bench, tmp_path, monkeypatch):
  from iab_jax import methods

  monkeypatch.setitem(methods._REGISTRY, "two_phase",
                      ("Two Phase", "tests.trainers.test_supervised:TwoPhase"))
  config = _config(tiny_bench, checkpoint_every_steps=0)
  config.method = "two_phase"
  config.evals.test.levels = [0]
  reference = main_lib.run(config, str(tmp_path / "reference"))
  assert reference["checkpoint"]["phase"] == 1  # the warm-up's epoch is never the one tested
  vals = _by_step(str(tmp_path / "reference"), "val/accuracy")
  assert len(vals) == 3
  assert reference["checkpoint"]["val_accuracy"] == max(list(vals.values())[1:])

  # Crash right after the warm-up phase's last checkpoint, then run the same config again.
  real_make = supervised.make_train_step

  class Crash(Exception):
    pass

  def crash_in_main(method, tx, phase, mesh):
    if phase.name == "main":
      raise Crash
    return real_make(method, tx, phase, mesh)

  workdir = str(tmp_path / "crashed")
  monkeypatch.setattr(supervised, "make_train_step", crash_in_main)
  with pytest.raises(Crash):
    main_lib.run(config, workdir)
  monkeypatch.setattr(supervised, "make_train_step", real_make)
  resumed = main_lib.run(config, workdir)
  # It resumed: the warm-up epoch was validated once, not again after the crash.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert sum("val/accuracy" in line for line in f) == 3
  assert resumed["checkpoint"] == reference["checkpoint"]
  assert resumed["evals"] == reference["evals"]


def test_resuming_under_another_config_is_refused(reference_run, tiny_bench, tmp_path):
  import shutil

  workdir = str(tmp_path / "copy")
  shutil.copytree(reference_run[0], workdir)
  config = _config(tiny_bench)
  config.optimizer.learning_rate = 0.1
  with pytest.raises(ValueError, match=r"config.optimizer.learning_rate: 0.003 -> 0.1"):
    main_lib.run(config, workdir)
  config = _config(tiny_bench)
  config.evals.test.levels = [0]  # evaluation settings may change
  results = main_lib.run(config, workdir)
  assert list(results["evals"]["test"]["levels"]) == ["0"]
