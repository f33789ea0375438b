"""The ``mawstron`` distribution.

The import package ``mawstron`` is a namespace whose subpackages live in the repository's top-level folders:
``core/`` -> ``mawstron.core``, ``kernels/`` -> ``mawstron.kernels``, ``parallel/`` -> ``mawstron.parallel``,
``cli/`` -> ``mawstron.cli``.  Nothing is installed as a bare top-level ``core`` or ``kernels``.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "mawstron.core": "core",
    "mawstron.kernels": "kernels",
    "mawstron.parallel": "parallel",
    "mawstron.cli": "cli",
}


def _packages():
    packages, package_dir = [], {}
    for name, folder in PACKAGE_DIRS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = _packages()

setup(
    name="mawstron",
    version="0.1.0",
    description="MAE pre-pretraining -> weakly-supervised pretraining of billion-parameter ViTs on DeepSpeed ZeRO-3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"mawstron.kernels.fused": ["*.json"]},  # the attention config table
    install_requires=[
        # torch is not pinned: install the build for your platform first (CPU wheel or CUDA), pip keeps it
        "torch>=2.3",
        "deepspeed>=0.16",
        "triton>=3.0; platform_system == 'Linux'",
        "nvidia-dali-cuda120>=1.40; platform_system == 'Linux'",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "pillow>=10.0",
        # LiT / MAWS-CLIP text tower (XLM-R) and caption tokenizers; these versions install beside torch 2.13
        # without pulling torchvision or another torch (checked with pip install --dry-run)
        "transformers==5.24.0",
        "tokenizers==0.23.3",
    ],
    extras_require={
        # what only GPU clusters need: NVML monitoring, MPI-based multi-node launchers, TensorBoard logging
        "cluster": ["nvidia-ml-py>=12.0", "mpi4py>=3.1", "tensorboard>=2.14"],
        "test": ["pytest>=7.4"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["mawstron = mawstron.cli.main:main"]},
)
