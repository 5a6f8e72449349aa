"""``--publish``: the README's performance table of a device, regenerated from every committed
results file of that device (GPU rows between ``<!-- perf-table-gpu -->`` and ``<!--
/perf-table-gpu -->``, CPU rows between ``<!-- perf-table -->`` and ``<!-- /perf-table -->``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

from benchmarks import environment, report
from benchmarks.results import SCHEMA, write_text

__all__ = ["publish_readme_table", "replace_block"]


def replace_block(text: str, name: str, body: str, where: str) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced by
    ``body``; ``where`` names the file in the error when the markers are not there once each."""
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(
            f"{where}: expected one '{start.strip()}' line and one '{end}' line around the "
            f"performance table, found {text.count(start)} and {text.count(end)}"
        )
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return head + start + body.rstrip("\n") + "\n" + end + tail


def publish_readme_table(results_json: Path, results_dir: Path, readme: Path) -> Path:
    """Regenerate ``readme``'s performance table of the device of ``results_json`` from every
    results file of that device and widths in ``results_dir``, merged oldest first."""

    def key(data: Dict[str, Any]) -> Tuple[str, str]:
        return environment.device_key(data["header"]), data["header"].get("widths", "preset")

    mine = json.loads(Path(results_json).read_text())
    parts = []
    for path in sorted(p for p in Path(results_dir).glob("*.json") if p.is_file()):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("schema") == SCHEMA and key(data) == key(mine):
            parts.append(data)
    parts.sort(key=lambda d: d["header"].get("timestamp_utc", ""))
    block = "perf-table-gpu" if mine["header"].get("gpu_name") else "perf-table"
    table = report.readme_table(report.merge_results(parts))
    write_text(readme, replace_block(readme.read_text(), block, table, str(readme)))
    return readme
