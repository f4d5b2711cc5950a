from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="pyro_gen",
    version="0.1.0",
    description="Deep generative models as Pyro programs: declarative latent-variable models, flow guides, one trainer, honest evaluation",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pyro_gen", "pyro_gen.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "pyro-ppl>=1.9",
        "arviz>=0.20",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "pandas>=1.5",  # tables in the notebooks (also an arviz dependency)
        "matplotlib>=3.7",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={"test": ["pytest>=7", "nbformat>=5", "ruff>=0.5"]},
    entry_points={"console_scripts": ["pyro-gen=pyro_gen.cli:main"]},
)
