"""Adapters to other libraries' interfaces. Each submodule needs its library (an optional extra);
importing this package needs none."""
