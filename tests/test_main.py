"""The command line: config errors are one clear line that names the key, never a traceback."""

import os
import subprocess
import sys

import pytest

from configs import common, quickstart, resnet50, small_cnn
from iab_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "iab_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["--config.nope=1"], "error: --config.nope: the config has no field 'nope'"),
    (["--config.input.batch_sz=3"], "error: --config.input.batch_sz: the config has no field "
                                    "'input.batch_sz'; did you mean 'batch_size'?"),
    (["--config.inpt.batch_size=3"],
     "error: --config.inpt: the config has no field 'inpt'; did you mean 'input'?"),
    (["--config.model.dtype=float8"],
     "error: config.model.dtype='float8'; expected one of float32, bfloat16, float16"),
    (["--config.input.nope=1"], "error: --config.input.nope: the config has no field 'input.nope'"),
    (["--config.input.batch_size=abc"], "error: --config.input.batch_size=abc: expected an integer"),
    (["--config.optimizer.learning_rate=fast"],
     "error: --config.optimizer.learning_rate=fast: expected a number"),
    (["--config.input.batch_size=0"], "error: config.input.batch_size=0; expected a positive integer"),
    (["--config.method=nope"], "error: config.method='nope' is not a known method"),
])
def test_bad_overrides(tmp_path, args, expected):
  done = _run("--config=configs/quickstart.py:standard", f"--workdir={tmp_path}/run", *args)
  assert done.returncode == 2
  assert "Traceback" not in done.stderr and "\\" not in done.stderr
  assert done.stderr.strip() == expected or expected in done.stderr, done.stderr[-2000:]
  assert len(done.stderr.strip().splitlines()) == 1
  assert not os.path.exists(f"{tmp_path}/run")


@pytest.mark.parametrize("config, expected", [
    ("configs/quickstart.py:semantic7", "semantic1 (cat), semantic2 (bedroom), semantic3 (FFHQ)"),
    ("configs/quickstart.py:semantic:unicorn", "unknown semantic class"),
    ("configs/quickstart.py:standard,fast", "unknown config option 'fast'"),
    ("configs/nope.py", "No such file or directory: 'configs/nope.py'"),
])
def test_bad_config_argument(tmp_path, config, expected):
  done = _run(f"--config={config}", f"--workdir={tmp_path}")
  assert done.returncode == 2
  assert "Traceback" not in done.stderr
  assert expected in done.stderr.strip().splitlines()[-1]


def test_missing_dataset_is_one_line(tmp_path):
  done = _run("--config=configs/small_cnn.py:standard", f"--workdir={tmp_path}",
              f"--config.input.data_dir={tmp_path}/none")
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert "holds no dataset" in done.stderr and "data_prep.ingest" in done.stderr


@pytest.mark.parametrize("module", [quickstart, small_cnn, resnet50])
@pytest.mark.parametrize("arg", ["standard", "semantic1", "semantic2", "semantic3",
                                 "semantic:church", "semantic:Scene/classroom,runlocal"])
def test_every_config_and_task_validates(module, arg):
  config = module.get_config(arg)
  main_lib.validate(config, files=False)
  assert config.task.startswith("standard" if arg == "standard" else "semantic:")
  if arg == "semantic2":
    assert config.task == "semantic:bedroom"


def test_paper_recipes():
  standard, semantic = resnet50.get_config("standard"), resnet50.get_config("semantic3")
  assert (standard.num_epochs, semantic.num_epochs) == (20, 15)  # appendix D
  assert standard.optimizer.to_dict() == {"name": "adam", "learning_rate": 1e-3}
  assert standard.input.batch_size == 32
  assert standard.input.eval_transform.startswith("resize(256)|central_crop(256)")
  assert standard.evals.test.levels == tuple(range(7))
  cnn = small_cnn.get_config("semantic1")
  assert cnn.num_epochs == 15 and cnn.task == "semantic:cat"


def test_runlocal_and_data_options():
  config = small_cnn.get_config("standard,runlocal,data=/tmp/d")
  assert config.num_epochs == 1 and config.input.data_dir == "/tmp/d"
  assert common.parse_arg("semantic:FFHQ")[0].semantic == "FFHQ"


def test_validate_names_the_key():
  config = quickstart.get_config("standard")
  config.evals.test.levels = [0, 9]
  with pytest.raises(main_lib.ConfigError, match=r"config.evals.test.levels"):
    main_lib.validate(config, files=False)
  config = quickstart.get_config("standard")
  del config["evals"]
  with pytest.raises(main_lib.ConfigError, match="config.evals is missing"):
    main_lib.validate(config, files=False)


def _config_modules():
  import glob
  import importlib

  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
  return [importlib.import_module(f"configs.{n}") for n in names
          if n not in ("__init__", "common")]


@pytest.mark.parametrize("module", _config_modules(), ids=lambda m: m.__name__)
def test_every_shipped_config_gives_one_image_shape(module):
  """Images of any size come out of every shipped config's transforms at one size, so a folder
  of mixed sizes trains and tests."""
  from iab_jax.data import transforms

  for arg in ("standard", "semantic1"):
    config = module.get_config(arg)
    for key in ("transform", "eval_transform"):
      size = transforms.parse(config.input[key]).output_size
      assert size is not None, (module.__name__, key, config.input[key])
