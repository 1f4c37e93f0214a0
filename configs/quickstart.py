"""The quickstart: the small CNN on the built-in mini-bench, built on first use.

  python -m iab_jax.main --config configs/quickstart.py:standard --workdir workdir/quickstart/standard
  python -m iab_jax.main --config configs/quickstart.py:semantic1 --workdir workdir/quickstart/cat
  python -m iab_jax.report --runs workdir/quickstart --out workdir/quickstart/report

(`make quickstart` runs these three.) The mini-bench is built on first use, at workdir/minibench
only; `--config.input.data_dir=DIR` trains on a dataset already in DIR. Images are resized and
center-cropped to 64x64, which leaves the mini-bench's 64x64 images as they are and gives any other
dataset one shape. Each run tests its best checkpoint at all seven degradation levels.
"""

from configs import common

TRANSFORM = "resize(64)|central_crop(64)|normalize('half')"


def get_config(arg: str = "standard"):
  config = common.task_config(arg, method="small_cnn", standard_epochs=12, semantic_epochs=12,
                              learning_rate=3e-3, transform=TRANSFORM, eval_transform=TRANSFORM,
                              data_dir=common.MINIBENCH_DIR)
  config.input.prepare = "minibench"
  config.input.worker_count = 0  # 64x64 images decode faster than worker processes start
  config.optimizer.schedule = "cosine"
  config.model = {"name": "small_cnn", "dtype": "float32"}
  config.log_every_steps = 20
  return config
