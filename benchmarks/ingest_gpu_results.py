#!/usr/bin/env python
"""Bring the tarballs of ``benchmarks/gpu_session.sh`` into the repository.

    python benchmarks/ingest_gpu_results.py /work/.device/.../all.tar.gz models.tar.gz

For each tarball: print its summary (what ran, what failed), copy its ``results/`` files (JSON,
markdown, PNG) into ``benchmarks/results/`` -- atomically, and refusing to overwrite a different
file unless ``--force`` -- then regenerate the README performance table of each device whose
``run.py`` results arrived, from every results file of that device in ``benchmarks/results/``
(``run.py --readme-table`` merges them the same way). The table goes between
``<!-- perf-table-gpu -->`` and ``<!-- /perf-table-gpu -->`` for a GPU, ``<!-- perf-table -->``
and ``<!-- /perf-table -->`` for a CPU. Nothing is written when any check fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import environment, gpu_session, report  # noqa: E402
from cdt_fast.checkpoint import atomic_write  # noqa: E402

__all__ = ["main", "build_parser", "read_tarball", "readme_block", "replace_block", "IngestError"]

REPO_ROOT = environment.REPO_ROOT
RESULT_SUFFIXES = (".json", ".md", ".png")


class IngestError(Exception):
    """A tarball or target that cannot be ingested; the message names it."""


@dataclass(frozen=True)
class Tarball:
    path: Path
    manifest: Dict[str, Any]
    results: Tuple[Path, ...]  # extracted files bound for the results directory


def _extract(path: Path, into: Path) -> None:
    """Extracts regular files and directories only, never outside ``into`` (a tarball is data
    from another machine, not trusted to place files)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                target = (into / m.name).resolve()
                if not (m.isfile() or m.isdir()) or into.resolve() not in (target, *target.parents):
                    raise IngestError(
                        f"{path}: refusing member {m.name!r} (not a plain file or "
                        "directory inside the archive's folder)"
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and backports): its checks too
                tar.extractall(into, members=members, filter="data")
            else:
                tar.extractall(into, members=members)
    except (tarfile.TarError, OSError) as err:
        raise IngestError(f"{path}: not a readable .tar.gz ({err})") from err


def read_tarball(path: Path, scratch: Path, allow_dry: bool) -> Tarball:
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"TARBALL {path}: no such file")
    into = Path(tempfile.mkdtemp(dir=scratch))
    _extract(path, into)
    manifests = sorted(into.glob(f"*/{gpu_session.MANIFEST}"))
    if len(manifests) != 1:
        raise IngestError(
            f"{path}: expected one <phase>/{gpu_session.MANIFEST} (a tarball of "
            f"benchmarks/gpu_session.sh), found {len(manifests)}"
        )
    manifest = json.loads(manifests[0].read_text())
    if manifest.get("schema") != gpu_session.MANIFEST_SCHEMA:
        raise IngestError(
            f"{path}: manifest schema {manifest.get('schema')!r}, expected "
            f"{gpu_session.MANIFEST_SCHEMA!r}"
        )
    if manifest.get("dry_run") and not allow_dry:
        raise IngestError(
            f"{path}: a --dry-run tarball (CPU, tiny settings: not measurements); "
            "pass --allow-dry to ingest it anyway"
        )
    results_dir = manifests[0].parent / gpu_session.RESULTS
    results = tuple(
        sorted(p for p in results_dir.glob("*") if p.is_file() and p.suffix in RESULT_SUFFIXES)
    )
    return Tarball(path, manifest, results)


# -- README --------------------------------------------------------------------------------------


def readme_block(header: Dict[str, Any]) -> str:
    """The marker name of the README table a results header belongs in."""
    return "perf-table-gpu" if header.get("gpu_name") else "perf-table"


def replace_block(text: str, name: str, body: str, where: str = "README") -> str:
    """``text`` with what lies between ``<!-- name -->`` and ``<!-- /name -->`` replaced by
    ``body``."""
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise IngestError(
            f"{where}: expected one '{start.strip()}' line and one '{end}' line "
            f"around the performance table, found {text.count(start)} and "
            f"{text.count(end)}"
        )
    head, rest = text.split(start)
    _, tail = rest.split(end)
    if not head.endswith("\n") and head:
        raise IngestError(f"{where}: '{start.strip()}' must start a line")
    return head + start + body.rstrip("\n") + "\n" + end + tail


def _run_results(paths: Sequence[Path]) -> List[Tuple[Path, Dict[str, Any]]]:
    out = []
    for path in paths:
        if path.suffix != ".json":
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise IngestError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, dict) and data.get("schema") == gpu_session.RUN_SCHEMA:
            out.append((path, data))
    return out


def _table_key(data: Dict[str, Any]) -> Tuple[str, str]:
    return environment.device_key(data["header"]), data["header"].get("widths", "preset")


def readme_tables(ingested: Sequence[Path], results: Sequence[Path]) -> Dict[str, str]:
    """{marker name: table} for each device among the ingested run.py results, merged with every
    results file of that device (and widths) among ``results``, oldest first."""
    keys = {_table_key(data) for _, data in _run_results(ingested)}
    known = _run_results(results)
    tables: Dict[str, str] = {}
    owners: Dict[str, Tuple[str, str]] = {}
    for key in sorted(keys):
        parts = sorted(
            (data for _, data in known if _table_key(data) == key),
            key=lambda d: d["header"].get("timestamp_utc", ""),
        )
        block = readme_block(parts[0]["header"])
        if block in owners:
            raise IngestError(
                f"results of two devices ({owners[block][0]} and {key[0]}) or "
                f"widths for one README table ({block}): ingest them separately "
                "(the table shows one device)"
            )
        owners[block] = key
        tables[block] = report.readme_table(report.merge_results(parts))
    return tables


# -- the command ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/ingest_gpu_results.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument(
        "tarballs",
        type=Path,
        nargs="+",
        metavar="TARBALL",
        help="<phase>.tar.gz files written by benchmarks/gpu_session.sh",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results",
        help="where the results go (default benchmarks/results)",
    )
    p.add_argument(
        "--readme",
        type=Path,
        default=REPO_ROOT / "README.md",
        help="the README whose performance table is regenerated (default README.md)",
    )
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite results files that exist with other contents",
    )
    p.add_argument(
        "--allow-dry",
        action="store_true",
        help="accept --dry-run tarballs (tiny CPU numbers; for tests)",
    )
    return p


def _plan_copies(
    tarballs: Sequence[Tarball], results_dir: Path, force: bool
) -> List[Tuple[Path, Path, str]]:
    """(source, destination, what happens) for every result file, after checking them all."""
    plan, sources = [], {}
    conflicts = []
    for tb in tarballs:
        for src in tb.results:
            if src.name in sources:
                raise IngestError(
                    f"{src.name} is in both {sources[src.name]} and {tb.path}: "
                    "ingest them one at a time"
                )
            sources[src.name] = tb.path
            dest = results_dir / src.name
            if not dest.exists():
                plan.append((src, dest, "new"))
            elif dest.read_bytes() == src.read_bytes():
                plan.append((src, dest, "unchanged"))
            elif force:
                plan.append((src, dest, "overwritten"))
            else:
                conflicts.append(f"{dest} (from {tb.path})")
    if conflicts:
        raise IngestError(
            "these results files exist with other contents; pass --force to "
            "overwrite them:\n  " + "\n  ".join(conflicts)
        )
    return plan


def ingest(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise IngestError(f"--results-dir {results_dir} is not a directory")
    readme_text = None
    if not args.no_readme:
        if not Path(args.readme).is_file():
            raise IngestError(f"--readme {args.readme}: no such file (or pass --no-readme)")
        readme_text = Path(args.readme).read_text()
    with tempfile.TemporaryDirectory(prefix="cdt_fast-ingest-") as scratch:
        tarballs = [read_tarball(p, Path(scratch), args.allow_dry) for p in args.tarballs]
        plan = _plan_copies(tarballs, results_dir, args.force)
        for tb in tarballs:
            print(f"== {tb.path}")
            sys.stdout.write(gpu_session.summary_table(tb.manifest))
        # The README tables are made before anything is written, from the results directory as
        # it will be: a table that cannot be made stops the ingest with nothing changed.
        tables: Dict[str, str] = {}
        new_readme = readme_text
        if readme_text is not None:
            will_be = {p.name: p for p in sorted(results_dir.glob("*.json"))}
            will_be.update({src.name: src for src, _, _ in plan})
            tables = readme_tables([src for src, _, _ in plan], sorted(will_be.values()))
            for block, table in tables.items():
                new_readme = replace_block(new_readme, block, table, str(args.readme))
        print()
        for src, dest, what in plan:
            if what != "unchanged":
                atomic_write(dest, lambda tmp, src=src: shutil.copyfile(src, tmp))
            print(f"{what:11s} {dest}")
        if not plan:
            print("no results files in the tarballs")
    if readme_text is not None and new_readme != readme_text:
        atomic_write(args.readme, lambda tmp: Path(tmp).write_text(new_readme))
        print(
            f"regenerated the performance table(s) {', '.join(sorted(tables))} in {args.readme}; "
            "the prose around them (targets met or not) is for you to update"
        )
    elif readme_text is not None:
        print(f"{args.readme}: performance tables unchanged")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return ingest(args)
    except IngestError as err:
        print(f"ingest_gpu_results.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
