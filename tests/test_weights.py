"""The pretrained-weights registry, cache lookup, offline errors and the converters."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from iab_jax import weights
from iab_jax.data import transforms
from iab_jax.models import resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_registry_entries_are_complete():
  entries = weights.registry()
  assert "resnet50.tv_in1k" in entries
  for ckpt in entries.values():
    assert "/" in ckpt.source and ckpt.filename and ckpt.layout, ckpt
    transforms.parse(ckpt.preprocess)  # the preprocessing is a valid transform
    fields = getattr(__import__(f"iab_jax.models.{ckpt.module}", fromlist=["x"]),
                     ckpt.loader).__module__
    assert fields.endswith(ckpt.module)


def test_missing_offline_names_file_source_and_place(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    weights.load("resnet50.tv_in1k", str(tmp_path), download=False)
  message = str(e.value)
  assert os.path.join(str(tmp_path), "resnet50.tv_in1k", "model.safetensors") in message
  assert "https://huggingface.co/timm/resnet50.tv_in1k/blob/main/model.safetensors" in message
  assert "$IAB_WEIGHTS" in message
  with pytest.raises(ValueError, match="unknown pretrained weights 'resnet51'"):
    weights.load("resnet51")


def test_found_in_the_cache(tmp_path, monkeypatch):
  path = tmp_path / "resnet50.tv_in1k" / "model.safetensors"
  path.parent.mkdir()
  path.write_bytes(b"x")
  monkeypatch.setenv("IAB_WEIGHTS", str(tmp_path))
  assert weights.load("resnet50.tv_in1k") == str(path)
  assert weights.resolve("resnet50.tv_in1k") == str(path)
  assert weights.resolve("/some/file.safetensors") == "/some/file.safetensors"


@pytest.fixture(scope="module")
def full_resnet_file(tmp_path_factory):
  from tests.models.test_resnet import torchvision_state

  path = str(tmp_path_factory.mktemp("w") / "model.safetensors")
  save_file(torchvision_state(), path)
  return path


def test_convert_then_load_equals_direct_load(full_resnet_file, tmp_path):
  out = weights.convert("resnet50.tv_in1k", full_resnet_file, str(tmp_path))
  assert weights.is_flax_file(out) and not weights.is_flax_file(full_resnet_file)
  model = resnet.Model(num_classes=7)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                               train=False))
  fresh_head = {"kernel": np.zeros((2048, 7), np.float32), "bias": np.zeros(7, np.float32)}
  target = dict(abstract)
  target["params"] = {**abstract["params"], "fc": fresh_head}
  direct = weights.load_into(target, resnet, full_resnet_file)
  converted = weights.load_into(target, resnet, out)
  flat_a = jax.tree.leaves(direct)
  flat_b = jax.tree.leaves(converted)
  assert len(flat_a) == len(flat_b)
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(converted["params"]["fc"]["kernel"], 0)  # 7 classes: kept fresh


def test_cli(full_resnet_file, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  listing = subprocess.run([sys.executable, "-m", "iab_jax.weights", "--list"], env=env,
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert listing.returncode == 0 and "timm/resnet50.tv_in1k" in listing.stdout
  bad = subprocess.run([sys.executable, "-m", "iab_jax.weights", "--convert", "resnet50.tv_in1k",
                        "--src", str(tmp_path / "x.pth"), "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert bad.returncode == 2 and "data_prep.convert_weights" in bad.stderr
  assert "Traceback" not in bad.stderr


class Payload:
  """An arbitrary object in a checkpoint: weights_only=True must refuse to rebuild it."""


def test_pth_to_safetensors_without_running_the_pickle(tmp_path):
  torch = pytest.importorskip("torch", reason="converting a .pth needs torch")
  from safetensors.numpy import load_file

  from data_prep import convert_weights

  w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
  src = str(tmp_path / "ckpt.pth")
  torch.save({"epoch": 3, "state_dict": {"module.fc.weight": w, "module.fc.bias": w[0]}}, src)
  out = str(tmp_path / "ckpt.safetensors")
  shapes = convert_weights.convert(src, out, strip_prefix="module.")
  assert shapes == {"fc.weight": (2, 3), "fc.bias": (3,)}
  loaded = load_file(out)
  np.testing.assert_array_equal(loaded["fc.weight"], w.numpy())

  evil = str(tmp_path / "evil.pth")
  torch.save({"state_dict": {"w": w}, "extra": Payload()}, evil)
  with pytest.raises(ValueError, match="weights_only"):
    convert_weights.convert(evil, str(tmp_path / "evil.safetensors"))


def test_pickled_checkpoints_say_how_to_convert(tmp_path):
  pickled = [c for c in weights.registry().values() if not c.filename.endswith(".safetensors")]
  assert pickled, "the registry lists .pth checkpoints (DnCNN, AlexNet)"
  ckpt = pickled[0]
  with pytest.raises(FileNotFoundError) as e:
    weights.load(ckpt.name, str(tmp_path))
  message = str(e.value)
  assert "data_prep.convert_weights" in message and ckpt.url in message
  assert message.count(ckpt.local_filename) >= 1 and ckpt.local_filename.endswith(".safetensors")
