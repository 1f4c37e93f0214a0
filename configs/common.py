"""Config pieces every method shares: where the data is and how the input pipeline reads it.

Method configs start from `input_config()` and override what their recipe states (transform,
batch size). Fields map one to one onto iab_jax.data.pipeline.make_dataset.
"""

import ml_collections

# The paper evaluates at 256x256: resize the shorter side, then center-crop.
EVAL_TRANSFORM = "resize(256)|central_crop(256)"


def input_config(data_dir: str = "workdir/minibench", manifest: str = "standard",
                 transform: str = EVAL_TRANSFORM, eval_transform: str = EVAL_TRANSFORM,
                 batch_size: int = 32) -> ml_collections.ConfigDict:
  """The input section of a run config.

  manifest: a file, or a name under <data_dir>/splits (standard, semantic_cat, openset_fold0...).
  cache: "auto" reads a pre-resized cache whose ops begin `transform` when one was built
  (python -m data_prep.build_cache), "" never does, or a cache directory.
  """
  return ml_collections.ConfigDict({
      "data_dir": data_dir,
      "manifest": manifest,
      "transform": transform,
      "eval_transform": eval_transform,
      "batch_size": batch_size,
      "eval_batch_size": batch_size,
      "cache": "auto",
      "worker_count": 0,
      "seed": 0,
  })


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  return input_config()
