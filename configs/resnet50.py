"""ResNet-50 (paper appendix D): ImageNet-pretrained torchvision ResNet-50, fc -> linear head.

  python -m iab_jax.main --config configs/resnet50.py:standard --workdir runs/resnet50_standard
  python -m iab_jax.main --config configs/resnet50.py:semantic1 --workdir runs/resnet50_cat

20 epochs on the standard task (the paper's one change to the defaults), 15 on semantic tasks;
Adam 1e-3, batch 32. The ImageNet weights are a torchvision-layout safetensors file
(e.g. timm's `resnet50.tv_in1k`); `--config.model.pretrained=''` trains from scratch instead.
"""

from configs import common


def get_config(arg: str = "standard"):
  config = common.task_config(
      arg, method="resnet50", standard_epochs=20, semantic_epochs=15,
      transform=common.EVAL_TRANSFORM + "|normalize('imagenet')",
      eval_transform=common.EVAL_TRANSFORM + "|normalize('imagenet')")
  config.model = {"name": "resnet", "pretrained": "weights/resnet50_tv_in1k.safetensors",
                  "dtype": "float32"}
  return config
