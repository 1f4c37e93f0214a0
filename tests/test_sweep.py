"""iab_jax.sweep: the command that runs every method's preset and prints their Table 3."""

from iab_jax import sweep


def test_every_method_of_the_sweep_has_a_config_with_the_presets():
  import importlib

  from iab_jax import methods

  for name in sweep.METHODS:
    assert name in methods.names()
    module = importlib.import_module(f"configs.{name}")
    for arg in sweep.PRESETS.values():
      config = module.get_config(arg)
      assert config.method == name and config.random_init_fallback
      assert config.input.prepare == "minibench"


def test_bad_arguments_exit_2(capsys):
  assert sweep.main(["--methods", "resnet50,nope"]) == 2
  assert "unknown 'nope'" in capsys.readouterr().err
  assert sweep.main(["--learning_rate=1"]) == 2
  assert "only --config.<key>=<value>" in capsys.readouterr().err


def test_fingerprint_plan_and_search_space_summary():
  # Each run of the plan names only runs before it, and every config of it exists.
  import importlib

  seen = set()
  for name, method, arg, flags in sweep.FINGERPRINT_PLAN:
    for flag in flags:
      assert flag.split("{")[1].split("}")[0] in seen
    importlib.import_module(f"configs.{method}")
    seen.add(name)
  groups = sweep.search_space_groups()
  assert groups == {"inside": ["mini_nearest", "mini_bicubic"],
                    "partly": ["mini_bilinear", "mini_shuffle"],
                    "outside": ["mini_lanczos", "mini_deconv"]}
  i2m = {"auc_ovo_per_target": {"mini_nearest": 0.9, "mini_bicubic": 0.7, "mini_lanczos": 0.4}}
  fold = {"closed_set_accuracy": 0.5, "auroc": 0.6, "oscr": 0.3,
          "per_unknown_generator": {"mini_deconv": {"auroc": 0.2}}}
  results = {"sim": {"evals": {}},
             "ofa": {"evals": {"image_to_model": {"levels": {"0": i2m}}}},
             "ofa_openset0": {"evals": {"openset": {"levels": {"0": fold}}}},
             "ofa_openset1": {"evals": {"openset": {"levels": {"0": {**fold, "auroc": 0.8}}}}}}
  table = sweep.fingerprint_summary(results)
  rows = [line for line in table.splitlines() if line.startswith("| ofa")]
  assert len(rows) == 1 and "sim" not in table.split("Search-space")[0]
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  assert cells == ["ofa", "80.0", "–", "40.0", "–", "–", "20.0", "50.0±0.0", "70.0±10.0",
                   "30.0±0.0"]


def test_detection_plans_and_fraction_summary(tmp_path, monkeypatch, capsys):
  import importlib
  import json
  import os

  plan = sweep.detection_plan("mini_lanczos")
  assert [p[0] for p in plan] == ["acm_mini_lanczos", "acm_mini_lanczos_source_mini_lanczos",
                                  "probe_mini_lanczos"]
  assert plan[1][3] == ("--config.acm.source=mini_lanczos",)
  for _, method, arg, _ in plan:
    config = importlib.import_module(f"configs.{method}").get_config(arg)
    assert config.task == "detection:mini_lanczos" and list(config.evals) == ["detection"]
  monkeypatch.setattr(sweep, "_fraction_batch", lambda method, arg, fraction: 7)
  plan = sweep.detection_plan("mini_lanczos", (0.1, 1.0))
  assert [p[0] for p in plan] == ["acm_mini_lanczos_f0.1", "acm_mini_lanczos",
                                  "probe_mini_lanczos_f0.1", "probe_mini_lanczos"]
  assert plan[0][3] == ("--config.input.train_fraction=0.1", "--config.input.batch_size=7")
  outcomes = []
  for name, fraction, ap in (("a", 0.1, 0.6), ("b", 1.0, 0.75)):
    workdir = tmp_path / name
    os.makedirs(workdir)
    (workdir / "results.json").write_text(json.dumps({
        "method_display": "ACM", "config": {"input": {"train_fraction": fraction}},
        "evals": {"detection": {"levels": {"0": {"ap": ap, "accuracy": 0.5}}}}}))
    outcomes.append({"workdir": str(workdir), "method": "acm"})
  table = sweep.fraction_summary(outcomes, (0.1, 1.0))
  assert "| ACM | 60.0 / 50.0 | 75.0 / 50.0 |" in table
  assert sweep.main(["--preset", "detection_fractions", "--fractions", "0,2"]) == 2
  assert "--fractions" in capsys.readouterr().err
