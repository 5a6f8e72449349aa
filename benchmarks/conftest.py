"""``pytest benchmarks/ --benchmark-only`` runs the kernel microbenchmarks (pytest-benchmark).

They are named ``bench_*.py`` so that CI's ``pytest tests`` and a bare ``pytest`` never collect
them; this hook collects them when pytest is pointed at this directory. Files named on the
command line are collected by pytest itself, so they are left alone here.
"""

import pytest


def pytest_collect_file(file_path, parent):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
