"""The README's quickstart, end to end: the Makefile's own commands, with fewer epochs."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe(target: str) -> list[str]:
  """The command lines of a Makefile target."""
  with open(os.path.join(ROOT, "Makefile")) as f:
    lines = f.read().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
  out = []
  for line in lines[start + 1:]:
    if not line.startswith("\t"):
      break
    out.append(line.strip())
  return out


def test_quickstart(tmp_path):
  # Run from an empty directory: the quickstart builds its mini-bench at ./workdir/minibench.
  workdir, data = str(tmp_path / "quickstart"), str(tmp_path / "workdir" / "minibench")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  commands = _recipe("quickstart")
  assert len(commands) == 3
  outputs = []
  for command in commands:
    command = (command.replace("$(BIN)/python", sys.executable).replace("$(QUICKSTART)", workdir)
               .replace("configs/", os.path.join(ROOT, "configs") + "/"))
    if "iab_jax.main" in command:  # smaller than the real quickstart, same path through the code
      command += " --config.num_epochs=4"
    done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs.append(done.stdout)
  # The first run built the mini-bench and its standard split; the second added the cat split.
  assert sorted(os.listdir(os.path.join(data, "splits"))) == ["semantic_cat.json", "standard.json"]
  with open(os.path.join(workdir, "standard", "results.json")) as f:
    standard = json.load(f)
  with open(os.path.join(workdir, "semantic_cat", "results.json")) as f:
    semantic = json.load(f)
  chance = 1 / len(standard["classes"])
  assert standard["evals"]["test"]["levels"]["0"]["accuracy"] > 4 * chance
  assert semantic["evals"]["test"]["levels"]["0"]["accuracy"] > 2 * chance
  assert len(standard["evals"]["test"]["levels"]) == len(semantic["evals"]["test"]["levels"]) == 7
  table = outputs[-1]
  assert "| Small CNN |" in table and "Train on Cat" in table
  report = os.path.join(workdir, "report")
  for name in ("table3.md", "table3.csv", "table3.tex"):
    assert os.path.getsize(os.path.join(report, name)) > 0
  assert sum(n.endswith(".png") for n in os.listdir(report)) == 2
