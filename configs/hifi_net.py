"""HiFi-Net (paper appendix D; METHODS.md 1.4): FENet (HiFi-Net's HRNet) + NLCDetection heads.

  python -m iab_jax.main --config configs/hifi_net.py:standard --workdir runs/hifi_net_standard
  python -m iab_jax.main --config configs/hifi_net.py:semantic1 --workdir runs/hifi_net_cat
  python -m iab_jax.main --config configs/hifi_net.py:standard,official --workdir runs/hifi_net_off
  python -m iab_jax.main --config configs/hifi_net.py:standard,minibench --workdir /tmp/hifi_mb

Recipe: images resize(256)|central_crop(256), normalised to [-1, 1]; trained from scratch (the
official code leaves the ImageNet HRNet initialisation commented out); loss = the sum of four
cross-entropies (weights 1) over the hierarchy levels, coarse to fine: generated/real, commercial/
open-source/real, the architecture group (Table 6), the run's classes; a level whose target is
unknown (-1) is left out of that level's mean. Adam 1e-3, no scheduler, batch 8 (the official
script's), 10 epochs standard / 15 semantic (the paper's defaults). Prediction: softmax of the
finest level. On the built-in mini-bench only the generated/real and the class levels train: its
simulated generators have no commercial/open-source or architecture labels.

Sizes (config.model): level_classes (2, 3, 6) are the coarse heads' sizes of Table 6 (the official
code has (2, 4, 6), one level-2 output never used); stem_width 64 (both stems, layer1's bottleneck
width); branch_channels (18, 36, 72, 144); layer1_blocks 2; branch_blocks 2 (BasicBlocks per branch
per stage); laplacian_scales (2, 4, 8); dropout_rate 0.2; head_width 18.

Options: `official` = the official code where it changes numbers: coarse heads (2, 4, 6) (needed
to import the released checkpoint with data_prep/import_official.py) and 10 epochs on the
semantic tasks too (the official script). `runlocal` (a seconds-long smoke test) and `minibench`
shrink the network through these same fields (stem_width 8, branch_channels (4, 8, 16, 32), one
block per stage) and the images (runlocal resize(32)|central_crop(32); minibench the central 32x32
of the mini-bench's 64x64 images, unresized, so that the generators' pixel-level traces stay), and
say so in the log; minibench trains 12 epochs at the recipe's batch 8.
"""

from configs import common
from iab_jax import console

# The mini-bench's 64x64 images keep their pixels (their generator traces) in a 32x32 crop.
_MINI_TRANSFORM = "central_crop(32)|normalize('half')"


def _transform(size: int) -> str:
  return f"resize({size})|central_crop({size})|normalize('half')"


def _shrink(config, option: str, *, size: int, stem_width: int, branch_channels, blocks: int):
  """A reduced HiFi-Net through the config's own sizes, and the log says so."""
  config.input.transform = config.input.eval_transform = _transform(size)
  config.model.stem_width = stem_width
  config.model.branch_channels = tuple(branch_channels)
  config.model.layer1_blocks = config.model.branch_blocks = blocks
  console.say("hifi_net %s: a reduced HiFi-Net (stem_width %d, branch_channels %s, %d block(s) "
              "per stage) on %dx%d images, not the paper's network", option, stem_width,
              tuple(branch_channels), blocks, size, size)


def get_config(arg: str = "standard"):
  options = common.options_of(arg)
  config = common.task_config(
      arg, method="hifi_net", standard_epochs=10, semantic_epochs=15, learning_rate=1e-3,
      batch_size=8, transform=_transform(256), eval_transform=_transform(256))
  config.model = {
      "level_classes": (2, 3, 6),
      "stem_width": 64,
      "branch_channels": (18, 36, 72, 144),
      "layer1_blocks": 2,
      "branch_blocks": 2,
      "laplacian_scales": (2, 4, 8),
      "dropout_rate": 0.2,
      "head_width": 18,
      "dtype": "float32",
  }
  if options.get("official"):
    config.model.level_classes = (2, 4, 6)
    config.num_epochs = 10  # training/scripts/hifi_net.bash: 10 epochs for every task

  if options.get("runlocal"):
    _shrink(config, "runlocal", size=32, stem_width=8, branch_channels=(4, 8, 16, 32), blocks=1)
  elif options.get("minibench"):
    _shrink(config, "minibench", size=32, stem_width=8, branch_channels=(4, 8, 16, 32), blocks=1)
    config.input.transform = config.input.eval_transform = _MINI_TRANSFORM
    config.input.eval_batch_size = 32  # training keeps the recipe's batch 8
    config.num_epochs = 12
  return config
