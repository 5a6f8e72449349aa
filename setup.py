"""Build script: the pure-Python package, with ``kernels/`` installed as ``cdt_fast.kernels``."""

from setuptools import find_packages, setup

packages = find_packages(include=["cdt_fast", "cdt_fast.*"]) + ["cdt_fast.kernels"]

setup(
    packages=packages,
    package_dir={"": ".", "cdt_fast.kernels": "kernels"},
    package_data={"cdt_fast": ["py.typed", "assets/*.safetensors"]},
)
