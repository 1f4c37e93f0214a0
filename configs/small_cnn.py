"""A small high-pass CNN (iab_jax/models/small_cnn.py): a fast baseline and the quickstart's method.

  python -m iab_jax.main --config configs/small_cnn.py:standard,data=DIR --workdir runs/cnn
"""

from configs import common


def get_config(arg: str = "standard"):
  config = common.task_config(arg, method="small_cnn", learning_rate=3e-3,
                              transform=common.EVAL_TRANSFORM + "|normalize('half')",
                              eval_transform=common.EVAL_TRANSFORM + "|normalize('half')")
  config.model = {"name": "small_cnn", "dtype": "float32"}
  return config
