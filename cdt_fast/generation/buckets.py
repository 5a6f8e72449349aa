"""Which latents of an ``encode-dataset`` folder can train the generator, grouped by clip shape.

A batch stacks clips of one shape, so ``gen-train`` groups latents into buckets by the shape of
the clips they give, ``(frames, h, w)``: ``frames`` latent frames (a window of any longer latent)
at the latent's own sides, or at a fixed latent crop. The generator cuts latent frames into
``patch_size`` x ``patch_size`` patches, so every bucket's sides must be multiples of it. The check
reads the manifest only (every finished latent's shape is recorded there), before any model is
built, and refuses a folder it cannot train on with one message that names the files and the
``encode-dataset`` command that makes usable latents.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Bucket", "LatentShapeError", "latent_buckets", "suggest_crop_sizes"]

EXAMPLES = 3  # files named per kind of problem


class LatentShapeError(ValueError):
    """Latents of an ``encode-dataset`` folder that the generator cannot train on."""


@dataclass(frozen=True)
class Bucket:
    """Clips of one shape: ``shape`` = (latent frames, h, w); ``indices`` index the manifest's
    finished latents (in its order)."""

    shape: Tuple[int, int, int]
    indices: Tuple[int, ...]


def _shape(folder: Path, entry: Dict[str, Any]) -> List[int]:
    """[1, C, T, h, w] as the manifest records it (the file's header when it does not)."""
    shape = entry.get("latent_shape")
    if shape is None:
        from ..latents import read_latent_metadata

        shape = read_latent_metadata(folder / entry["latent"]).shape
    return [int(v) for v in shape]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + "s" * (n != 1)


def _names(entries: Sequence[Dict[str, Any]], detail) -> str:
    shown = ", ".join(f"{e['source']} ({detail(e)})" for e in entries[:EXAMPLES])
    more = len(entries) - EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def suggest_crop_sizes(
    entries: Sequence[Dict[str, Any]], step: int, space_factor: int, most: int = 4
) -> List[Tuple[int, int]]:
    """``--crop`` sizes for re-encoding ``entries``: each video's encoded size rounded to the
    nearest multiples of ``step`` pixels (at least ``step``), the ``most`` commonest first."""
    counts: Counter = Counter()
    for e in entries:
        shape = e["_shape"]
        height = e.get("height", shape[3] * space_factor)
        width = e.get("width", shape[4] * space_factor)
        counts[tuple(max(step, step * round(side / step)) for side in (height, width))] += 1
    return [size for size, _ in counts.most_common(most)]


def latent_buckets(
    folder,
    manifest: Dict[str, Any],
    frames: int,
    patch_size: int,
    crop: Optional[Tuple[int, int]] = None,
) -> List[Bucket]:
    """The buckets of the manifest's finished latents for clips of ``frames`` latent frames, at
    each latent's own size or cut to ``crop`` = (h, w); sorted by shape. Raises
    :class:`LatentShapeError` naming every latent that cannot be used (too few frames, sides
    that are not multiples of ``patch_size`` or smaller than ``crop``, another channel count or
    tokenizer than the manifest's) and what to re-run."""
    folder = Path(folder)
    entries = [dict(e) for e in manifest.get("items", []) if e.get("status") == "ok"]
    if not entries:
        raise LatentShapeError(f"{folder}: the manifest lists no finished latents")
    for e in entries:
        e["_shape"] = _shape(folder, e)
    if manifest.get("config"):
        from ..config import CDTConfig

        config = CDTConfig.from_dict(manifest["config"])
        channels, space_factor = config.latent_dim, config.space_factor
    else:
        channels = Counter(e["_shape"][1] for e in entries).most_common(1)[0][0]
        space_factor = 8  # every CDT's
    tokenizer = manifest.get("architecture_hash")

    other_channels = [e for e in entries if e["_shape"][1] != channels]
    other_tokenizer = [
        e
        for e in entries
        if tokenizer is not None and e.get("architecture_hash", tokenizer) != tokenizer
    ]
    short = [e for e in entries if e["_shape"][2] < frames]
    if crop is None:
        bad_sides = [
            e for e in entries if e["_shape"][3] % patch_size or e["_shape"][4] % patch_size
        ]
    else:
        bad_sides = [e for e in entries if e["_shape"][3] < crop[0] or e["_shape"][4] < crop[1]]

    def latent_hw(e):
        return f"latent {e['_shape'][3]}x{e['_shape'][4]}"

    problems, remedies = [], []
    if other_channels or other_tokenizer:
        if other_channels:
            problems.append(
                f"another number of latent channels than the manifest's tokenizer ({channels}): "
                + _names(other_channels, lambda e: _count(e["_shape"][1], "channel"))
            )
        if other_tokenizer:
            problems.append(
                f"encoded by another tokenizer than the manifest's (hash {tokenizer}): "
                + _names(other_tokenizer, lambda e: f"hash {e['architecture_hash']}")
            )
        remedies.append("encode every video with one --model into a new folder")
    if short:
        shortest = min(e["_shape"][2] for e in entries)
        problems.append(
            f"fewer than {frames} latent frames: "
            + _names(short, lambda e: _count(e["_shape"][2], "latent frame"))
        )
        remedies.append(f"train on fewer frames (--frames {shortest} fits every latent)")
    if bad_sides:
        if crop is None:
            problems.append(
                f"latent sides that are not multiples of the generator's patch size "
                f"{patch_size}: " + _names(bad_sides, latent_hw)
            )
        else:
            problems.append(
                f"smaller than the {crop[0]}x{crop[1]} latent crop: " + _names(bad_sides, latent_hw)
            )
        step = space_factor * patch_size
        sizes = ",".join(f"{h}x{w}" for h, w in suggest_crop_sizes(entries, step, space_factor))
        source = manifest.get("input", "DIR")
        remedies.append(
            f"re-encode the videos, cropped to sides that are multiples of {step} pixels, into a "
            f"new folder with the --model they were encoded with: cdt-fast encode-dataset "
            f"{source} -o NEW --crop {sizes}, then cdt-fast latent-stats NEW"
        )
    if problems:
        bad = {id(e) for e in other_channels + other_tokenizer + short + bad_sides}
        raise LatentShapeError(
            f"{folder}: {len(bad)} of the {len(entries)} latents cannot train the generator: "
            + "; ".join(problems)
            + ". To fix: "
            + "; ".join(remedies)
        )

    groups: Dict[Tuple[int, int, int], List[int]] = {}
    for i, e in enumerate(entries):
        hw = tuple(e["_shape"][3:5]) if crop is None else tuple(crop)
        groups.setdefault((frames,) + hw, []).append(i)
    return [Bucket(shape, tuple(groups[shape])) for shape in sorted(groups)]
