"""iab_jax: ImageAttributionBench reimplemented in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="iab_jax",
    version="0.1.0",
    description="ImageAttributionBench in JAX/Flax: data spine, attributors, protocols, reports.",
    python_requires=">=3.11",
    packages=find_packages(include=["iab_jax", "iab_jax.*", "data_prep", "data_prep.*", "configs"]),
    package_data={"data_prep": ["captions/*.csv", "captions/LICENSE", "captions/README.md"]},
    install_requires=[
        "absl-py",
        "array-record>=0.8",
        "clu>=0.0.12",  # metric writers; they import TensorFlow and TensorBoard
        "flax>=0.10",
        "grain>=0.2.18",
        "huggingface_hub",  # fetches public checkpoints when online (iab_jax.weights)
        # tensorflow-datasets 4.9.10 imports it to build any dataset, but declares it only for
        # Python < 3.9 (etils 1.15 no longer brings it).
        "importlib_resources",
        "jax>=0.10",
        "matplotlib",  # confusion-matrix plots of the report
        "ml-collections",
        "numpy>=1.26",
        # DNA-Det's 170 image transformations (JPEG, blurs, resizes) as the official code's
        # albumentations computes them, with OpenCV.
        "opencv-python-headless>=4.8",
        "optax",
        "orbax-checkpoint>=0.11",
        "pillow>=11",
        "pyarrow>=15",
        "safetensors",  # pretrained weights, read with numpy
        "scikit-image>=0.24",  # the mini-bench's photographs ship inside it
        "tensorboard",
        "tensorflow-cpu",  # clu's TensorBoard writer and tfds.load; never touches the accelerator
        "tensorflow-datasets>=4.9",  # the TFDS builder over our shards (iab_jax.data.tfds_builder)
        "tqdm",
    ],
    extras_require={
        # albumentations 1.3.1 (the official code's pin) is the reference DNA-Det's
        # transformations are tested against.
        "test": ["pytest", "pytest-xdist", "scikit-learn", "albumentations==1.3.1"],
        # Reference PyTorch models for parity tests and benchmarks (a CUDA build of torch that
        # also runs on CPU; the pair that installs together on Python 3.11).
        "reference": ["torch==2.14.1", "torchvision==0.29.1", "timm", "open_clip_torch",
                      "transformers", "lpips", "deepinv"],
        # Building the benchmark (data_prep.caption, data_prep.generate): diffusers pipelines and
        # vision-language captioners. 0.42 is the first diffusers with every registered pipeline.
        # lmdb: LSUN's official exports (data_prep.sample_real). beautifulsoup4 + ftfy: PixArt's
        # default caption cleaning, which diffusers skips silently without them.
        "generate": ["torch>=2.4", "diffusers>=0.42", "transformers>=4.57", "accelerate",
                     "sentencepiece", "protobuf", "lmdb", "beautifulsoup4", "ftfy"],
    },
)
