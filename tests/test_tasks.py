"""Task names: the paper's sub-tasks and any of the ten semantic classes."""

import pytest

from iab_jax import tasks


@pytest.mark.parametrize("text, name, semantic", [
    ("standard", "standard", None),
    ("semantic1", "semantic:cat", "cat"),
    ("semantic2", "semantic:bedroom", "bedroom"),
    ("semantic3", "semantic:FFHQ", "FFHQ"),
    ("semantic:Scene/church", "semantic:church", "church"),
    ("semantic:HumanFace_celebahq", "semantic:celebahq", "celebahq"),
])
def test_parse(text, name, semantic):
  task = tasks.parse_task(text)
  assert (task.name, task.semantic) == (name, semantic)
  assert task.manifest_name == ("standard" if semantic is None else f"semantic_{semantic}")


@pytest.mark.parametrize("text", ["semantic0", "semantic:", "openset", "Standard"])
def test_unknown(text):
  with pytest.raises(ValueError, match="task"):
    tasks.parse_task(text)


def test_missing_manifest_says_how_to_make_it(tiny_bench):
  from configs import common

  cfg = common.input_config(tiny_bench)
  with pytest.raises(FileNotFoundError, match="--protocol semantic --semantic dog"):
    tasks.load(cfg, tasks.parse_task("semantic:dog"))
  data = tasks.load(cfg, tasks.parse_task("semantic1"))
  assert data.classes[0] == "real" and len(data.positions("train")) > 0
  with pytest.raises(ValueError, match="no split 'holdout'"):
    data.positions("holdout")
