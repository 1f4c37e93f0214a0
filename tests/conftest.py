"""Shared pytest setup: the repository root on sys.path, so tests import data_prep and tests.*."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# Triton's native library segfaults when it loads after TensorFlow's (an LLVM symbol clash), and
# torchvision loads it through torch._dynamo. A test process that writes TensorBoard files (TF)
# and later builds a torchvision reference would crash, depending on which tests xdist gives it;
# loaded first, both work. Triton comes with torch (the reference extra); 0.2 s.
try:
  import triton  # noqa: E402,F401
except ImportError:
  pass

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory):
  """A small mini-bench (672 images, 7 classes, 4 semantics) with standard and cat manifests."""
  from data_prep import minibench, split
  from iab_jax.data import manifests, records

  root = str(tmp_path_factory.mktemp("tiny_bench"))
  minibench.build(root, patches_per_semantic=24, verbose=False)
  ds = records.Dataset(root)
  for made in (split.standard_split(ds), split.semantic_split(ds, "cat")):
    manifests.save_manifest(made, manifests.default_manifest_path(
        root, made["protocol"], semantic=made["options"].get("semantic")))
  return root
