"""The CDT benchmark suite: ``python benchmarks/run.py`` (see run.py), its FLOP model (flops.py)
and timing (timing.py). Kernel microbenchmarks live beside them as ``bench_*.py``."""
