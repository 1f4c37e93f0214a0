"""The method registry: a config's `method` name -> the class that implements it.

Adding a method = a model module (iab_jax/models), a config file (configs/) and one line here.
"""

from __future__ import annotations

import importlib

# name: (the name in the paper's tables, "module:Class")
_REGISTRY: dict[str, tuple[str, str]] = {
    "resnet50": ("ResNet-50", "iab_jax.methods.classifier:Classifier"),
    "small_cnn": ("Small CNN", "iab_jax.methods.classifier:Classifier"),
    "dct_cnn": ("DCT-CNN", "iab_jax.methods.dct_cnn:DctCnn"),
    "clip_lr": ("CLIP-LR", "iab_jax.methods.clip_lr:ClipLR"),
    "hifi_net": ("HiFi-Net", "iab_jax.methods.hifi_net:HiFiNet"),
    "defl": ("Li et al.", "iab_jax.methods.defl:Defl"),
    "fsd": ("FSD", "iab_jax.methods.fsd:Fsd"),
    "dna_det": ("DNA-Det", "iab_jax.methods.dna_det:DnaDet"),
    "repmix": ("RepMix", "iab_jax.methods.repmix:RepMix"),
    "patch_forensics": ("PatchForensics", "iab_jax.methods.patch_forensics:PatchForensics"),
    "patchcraft": ("PatchCraft", "iab_jax.methods.patchcraft:PatchCraft"),
    "ssp": ("SSP", "iab_jax.methods.ssp:Ssp"),
    "ofa_simulator": ("OFA simulator", "iab_jax.methods.ofa_simulator:OfaSimulator"),
    "ofa": ("OFA", "iab_jax.methods.ofa:Ofa"),
    "embedding_lr": ("Features+LR", "iab_jax.methods.embedding_lr:EmbeddingLR"),
    "acm": ("ACM", "iab_jax.methods.acm:Acm"),
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def display_name(name: str) -> str:
  return _REGISTRY[name][0] if name in _REGISTRY else name


def get(name: str):
  """The Method subclass registered as `name`, its display_name set."""
  if name not in _REGISTRY:
    raise ValueError(f"config.method={name!r} is not a known method; known: {', '.join(names())}")
  display, target = _REGISTRY[name]
  module_name, class_name = target.split(":")
  cls = getattr(importlib.import_module(module_name), class_name)
  # One class may serve several registry names (a classifier over different networks).
  return type(cls.__name__, (cls,), {"display_name": display, "registry_name": name})
