"""The CDT benchmarks: the model benchmark ``python benchmarks/run.py`` (run.py and the modules it
ties together) and one op microbenchmark per op family (``bench_<family>.py``); a folder of the
checkout, not part of the installed package. docs/benchmarks.md says which module does what."""
