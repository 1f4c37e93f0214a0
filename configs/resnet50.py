"""ResNet-50 (paper appendix D): ImageNet-pretrained torchvision ResNet-50, fc -> linear head.

  python -m iab_jax.main --config configs/resnet50.py:standard --workdir runs/resnet50_standard
  python -m iab_jax.main --config configs/resnet50.py:semantic1 --workdir runs/resnet50_cat

20 epochs on the standard task (the paper's one change to the defaults), 15 on semantic tasks;
Adam 1e-3, batch 32. The ImageNet weights are torchvision's, as timm's `resnet50.tv_in1k`
safetensors file; `--config.model.pretrained=FILE` names another file, `--config.model.pretrained=`
trains from scratch.

`official`: the official code's 224 crop, StepLR(1 epoch, 0.9) and 10 epochs on both tasks.
`minibench` (the sweep's preset): 64x64 inputs and a shrunk ResNet (one block per stage, width
16) through the same model code, randomly initialised (ImageNet weights do not fit it); 10 epochs.
`runlocal` shrinks the same way.
"""

from configs import common


def get_config(arg: str = "standard"):
  config = common.task_config(
      arg, method="resnet50", standard_epochs=20, semantic_epochs=15,
      transform=common.EVAL_TRANSFORM + "|normalize('imagenet')",
      eval_transform=common.EVAL_TRANSFORM + "|normalize('imagenet')")
  # A registered name (python -m iab_jax.weights --list) is looked up in weights_dir, by default
  # $IAB_WEIGHTS or ~/.cache/iab_jax/weights, and downloaded there when online; a path is used as is.
  config.model = {"name": "resnet", "pretrained": "resnet50.tv_in1k", "weights_dir": "",
                  "dtype": "float32"}
  options = common.options_of(arg)
  if options.get("official"):
    # The official code (METHODS.md §1.1): Resize(256) + CenterCrop(224), StepLR(1, 0.9) stepped
    # per epoch, 10 epochs for both tasks (its scripts).
    official = common.EVAL_TRANSFORM.replace("central_crop(256)", "central_crop(224)")
    config.input.transform = config.input.eval_transform = official + "|normalize('imagenet')"
    config.optimizer.update(schedule="step", decay_every_epochs=1, decay_factor=0.9)
    config.num_epochs = 10
  if options.get("minibench") or options.get("runlocal"):
    small = "resize(64)|central_crop(64)|normalize('imagenet')"
    config.input.transform = config.input.eval_transform = small
    # ImageNet weights do not fit the shrunk network: it starts from random initialisation.
    config.model.update(stage_sizes=(1, 1, 1, 1), width=16, pretrained="")
    if options.get("minibench") and not options.get("runlocal"):
      config.num_epochs = 10
  return config
