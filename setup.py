"""iab_jax: ImageAttributionBench reimplemented in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="iab_jax",
    version="0.1.0",
    description="ImageAttributionBench in JAX/Flax: data spine, attributors, protocols, reports.",
    python_requires=">=3.11",
    packages=find_packages(include=["iab_jax", "iab_jax.*", "data_prep", "data_prep.*", "configs"]),
    install_requires=[
        "absl-py",
        "array-record>=0.8",
        "clu>=0.0.12",  # metric writers; they import TensorFlow and TensorBoard
        "flax>=0.10",
        "grain>=0.2.18",
        "huggingface_hub",  # fetches public checkpoints when online (iab_jax.weights)
        "jax>=0.10",
        "matplotlib",  # confusion-matrix plots of the report
        "ml-collections",
        "numpy>=1.26",
        "optax",
        "orbax-checkpoint>=0.11",
        "pillow>=11",
        "pyarrow>=15",
        "safetensors",  # pretrained weights, read with numpy
        "scikit-image>=0.24",  # the mini-bench's photographs ship inside it
        "tensorboard",
        "tensorflow-cpu",  # only for clu's TensorBoard writer; never touches the accelerator
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "scikit-learn"],
        # Reference PyTorch models for parity tests and benchmarks (a CUDA build of torch that
        # also runs on CPU; the pair that installs together on Python 3.11).
        "reference": ["torch==2.14.1", "torchvision==0.29.1", "timm", "open_clip_torch",
                      "transformers", "lpips", "deepinv"],
    },
)
