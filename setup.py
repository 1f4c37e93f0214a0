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
        "flax>=0.10",
        "grain>=0.2.18",
        "jax>=0.10",
        "ml-collections",
        "numpy>=1.26",
        "optax",
        "pillow>=11",
        "pyarrow>=15",
        "scikit-image>=0.24",  # the mini-bench's photographs ship inside it
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist"],
    },
)
