import re
from pathlib import Path

from setuptools import setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("ept_fast/_version.py").read_text(encoding="utf-8")).group(1)

setup(
    name="ept_fast",
    version=VERSION,
    description="Efficient Prompt Tuning (EPT) with fused Triton kernels for Hugging Face models",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The kernels live in the top-level kernels/ folder but import as ept_fast.kernels.
    packages=["ept_fast", "ept_fast.training", "ept_fast.server", "ept_fast.kernels"],
    package_dir={"ept_fast": "ept_fast", "ept_fast.kernels": "kernels"},
    install_requires=[
        # Tested with torch 2.13 / triton 3.8 / transformers 5.24 (constraints.txt, CPU) and
        # torch 2.11 / triton 3.6 / transformers 5.17 (the GPU image, installed with --no-deps).
        "torch>=2.4,<3",
        "triton>=3.6,<4",
        "numpy>=1.26",
        "transformers>=4.46,<6",
        "huggingface_hub>=0.24",
        "safetensors>=0.4",
        "accelerate>=1.1",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "filelock>=3.10",
    ],
    entry_points={"console_scripts": ["ept-fast=ept_fast.cli:main"]},
    extras_require={
        "hub": ["datasets>=3.0,<6"],  # registry tasks loaded from the Hugging Face hub
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],  # ept-fast serve
        "test": ["pytest>=8", "pytest-benchmark>=5", "hypothesis>=6.100", "datasets>=3.0,<6", "peft>=0.13",
                 "ruff>=0.6", "tensorboardX>=2.6", "fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27",
                 "openai>=1.0"],
    },
)
