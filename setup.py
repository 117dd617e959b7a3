from setuptools import find_packages, setup

setup(
    name="tinygrad_cnn",
    version="0.1.0",
    description="A small, readable deep-learning engine for CNNs on NumPy (CPU) and CuPy (GPU)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["tinygrad_cnn", "tinygrad_cnn.*", "kernels", "kernels.*",
                                    "models", "models.*"]),
    install_requires=["numpy>=1.24", "numba>=0.58", "matplotlib>=3.6", "tqdm>=4.60"],
    entry_points={"console_scripts": ["tinygrad-cnn = tinygrad_cnn.cli:main"]},
    extras_require={
        "gpu": ["cupy-cuda12x"],
        "mpi": ["mpi4py>=3.1", "mpich"],
        "test": ["pytest>=7"],
    },
)
