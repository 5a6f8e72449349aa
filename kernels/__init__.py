"""Triton kernels, one op per module. Installed as ``cdt_fast.kernels`` (PyPI already has a
top-level package named ``kernels``)."""
