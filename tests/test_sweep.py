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
