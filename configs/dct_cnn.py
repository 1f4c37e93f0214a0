"""DCT-CNN (Frank et al., ICML 2020; paper appendix D): SimpleCNN over DCT spectra.

  python -m iab_jax.main --config configs/dct_cnn.py:standard --workdir runs/dct_cnn_standard
  python -m iab_jax.main --config configs/dct_cnn.py:semantic1 --workdir runs/dct_cnn_cat
  python -m iab_jax.main --config configs/dct_cnn.py:standard,official --workdir runs/dct_official
  python -m iab_jax.main --config configs/dct_cnn.py:standard,minibench --workdir /tmp/dct_cnn_mb

Default recipe (the paper, and the original GANDCTAnalysis): resize(256)|central_crop(256), then
the per-channel orthonormal 2-D DCT-II of the 0-255 pixels, log(|c| + 1e-12), standardised per
coefficient with the training split's mean and std (one streamed pass before training, kept in
the checkpoint); cross-entropy, Adam 1e-3, no schedule, batch 32, 10 epochs standard / 15
semantic.

`official` (the benchmark's dataset_dct.py): |DCT| without log and without standardisation
(config.model.standardize=False), and the last epoch is tested.

Sizes: config.model.widths (3, 8, 16, 32) are SimpleCNN's four convolution widths; the input side
(256) sets the linear layer's width, 32 * (side / 4)^2. `minibench` keeps the mini-bench's 64x64
images (a 32 * 16 * 16 -> 7 linear layer); `runlocal` shrinks the input to 32x32.
"""

from configs import common

# The paper's 256x256 input; the transforms end with the dct op (iab_jax/data/transforms.py).
IMAGE_SIZE = 256


def _transform(size: int, log: bool) -> str:
  return f"resize({size})|central_crop({size})|dct(log={log})"


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  official = bool(options.get("official"))
  spec = _transform(IMAGE_SIZE, log=not official)
  config = common.task_config(arg, method="dct_cnn", standard_epochs=10, semantic_epochs=15,
                              transform=spec, eval_transform=spec)
  config.model = {"name": "dct_cnn", "widths": (3, 8, 16, 32), "standardize": not official,
                  "dtype": "float32"}
  if options.get("minibench"):
    # The mini-bench's images are 64x64: kept at their size rather than up-sampled 4x.
    # The paper's epochs and batch size reach the preset's accuracy as they are.
    config.input.transform = config.input.eval_transform = _transform(64, log=not official)
  if options.get("runlocal"):
    from iab_jax import console

    console.say("runlocal: DCT-CNN input shrunk from %d to 32 pixels", IMAGE_SIZE)
    config.input.transform = config.input.eval_transform = _transform(32, log=not official)
  return config
