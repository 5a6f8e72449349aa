"""``cdt-fast encode-dataset DIR -o OUT``: every video of a folder tree into latent files, with a
manifest; resumable, and spread over processes, GPUs and nodes by ``torchrun``.

Layout: ``OUT/<path of the video under DIR>.safetensors`` (one latent file per video, the format of
``cdt-fast encode``) and ``OUT/manifest.json``, which records how the frames were resized
(``resize``) so that a rerun cannot mix geometries. Video ``i`` of the sorted list goes to rank
``i % WORLD_SIZE``. Each latent is written atomically, so a file that exists is finished: a rerun
skips it. Each rank writes its part of the manifest, and after a barrier rank 0 merges them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from .. import video_io
from . import _common, _console

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def _find_videos(root: Path) -> List[str]:
    if not root.is_dir():
        if root.exists():
            raise ValueError(f"{root} is not a directory")
        raise FileNotFoundError(f"dataset directory not found: {root}")
    found = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and video_io.is_video_path(p) and not p.name.startswith(".")
    )
    if not found:
        raise ValueError(f"{root} holds no videos ({', '.join(video_io.READ_SUFFIXES)})")
    return found


def _ranks() -> Tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world, local


def _init_group(world: int, hours: float) -> bool:
    """Join the process group (gloo: only a barrier is needed) when there are several ranks."""
    if world == 1:
        return False
    import torch.distributed as dist

    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise ValueError(
            f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are unset; launch with torchrun"
        )
    if not dist.is_initialized():
        # Ranks finish at different times; the barrier must outwait the slowest.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=hours))
    return True


def crop_sizes(text: Optional[str]) -> Optional[List[Tuple[int, int]]]:
    """``--crop HxW[,HxW...]`` as [(H, W), ...]; None without it. ValueError naming --crop."""
    if text is None:
        return None
    sizes: List[Tuple[int, int]] = []
    for part in str(text).split(","):
        try:
            h, w = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            h = w = 0
        if h < 1 or w < 1:
            raise ValueError(
                f"--crop must be HxW or a comma-separated list of them (e.g. 64x64 or "
                f"48x80,64x64,80x48), positive, got {text!r}"
            )
        if (h, w) in sizes:
            raise ValueError(f"--crop lists {h}x{w} twice")
        sizes.append((h, w))
    return sizes


def resize_record(args: argparse.Namespace) -> dict:
    """How the frames of every video are resized before encoding (the manifest's ``resize``)."""
    crop = crop_sizes(args.crop)
    if crop is not None:
        return {"mode": "crop", "sizes": [list(s) for s in crop]}
    if args.size is None:
        return {"mode": "none"}
    h, w = video_io.check_size(args.size)
    return {"mode": "shorter_side", "size": h} if w == 0 else {"mode": "stretch", "size": [h, w]}


def _resize_options(record: dict) -> str:
    """The options that give a ``resize`` record."""
    mode = record.get("mode")
    if mode == "crop":
        return "--crop " + ",".join(f"{h}x{w}" for h, w in record["sizes"])
    if mode == "shorter_side":
        return f"--size {record['size']}"
    if mode == "stretch":
        return "--size {}x{}".format(*record["size"])
    return "neither --size nor --crop"


def _check_same_resize(out: Path, record: dict) -> None:
    """A rerun into ``out`` must resize as the run that wrote its manifest did."""
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        done = json.loads(path.read_text()).get("resize")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"-o: {path} is not an encode-dataset manifest") from None
    if done is not None and done != record:
        raise ValueError(
            f"-o: {out} holds latents encoded with {_resize_options(done)}, this run asks for "
            f"{_resize_options(record)}; use a new output directory"
        )


def _entry(source: str, latent_rel: str, info) -> dict:
    video = info.video
    entry = {
        "source": source,
        "latent": latent_rel,
        "status": "ok",
        "latent_shape": list(info.shape),
        "architecture_hash": info.architecture_hash,
        "frames": video["frames"],
        "fps": video["fps"],
        "height": video["height"],
        "width": video["width"],
        "source_height": video.get("source_height", video["height"]),
        "source_width": video.get("source_width", video["width"]),
    }
    if "timing" in video:  # how the clip keeps its duration (repeated frames or timestamps)
        entry["timing"] = video["timing"]
    return entry


def _encode_one(loaded, src: Path, dst: Path, args, chunk_frames: Optional[int]) -> None:
    from .. import latents
    from ..pipelines import encode_chunk_frames, encode_clip, open_clip, video_metadata

    clip, info, _ = open_clip(
        str(src),
        loaded.config,
        args.size,
        None,
        allow_truncated=args.allow_truncated,
        crop=crop_sizes(args.crop),
    )
    chunk = encode_chunk_frames(loaded.config, clip, loaded.device, chunk_frames)
    z = encode_clip(loaded.model, clip, chunk)
    latents.save_latent(dst, z, loaded.config, video_metadata(info, clip))


def _remove_stale_temporaries(dst: Path) -> None:
    """A run killed mid-write (no chance to clean up) leaves ``.<name>.*.tmp`` beside ``dst``."""
    if dst.parent.is_dir():
        for tmp in dst.parent.glob(f".{dst.name}.*.tmp"):
            tmp.unlink()


def _finished(dst: Path, arch_hash: str):
    """The metadata of an existing output (a LatentFile), None if there is none; refuses another
    model's."""
    from .. import latents

    if not dst.is_file():
        return None
    info = latents.read_latent_metadata(dst)
    if info.architecture_hash != arch_hash:
        raise ValueError(
            f"{dst} holds a latent of another model (hash {info.architecture_hash}, "
            f"this one {arch_hash}); use a new output directory"
        )
    return info


def _item(
    loaded, source: str, args, chunk_frames: Optional[int], may_encode: bool
) -> Tuple[dict, bool]:
    """One video's manifest entry, encoding it unless it is done or ``may_encode`` is False.
    Returns (entry, whether it was encoded now)."""
    from .. import latents

    latent_rel = source + ".safetensors"
    dst = Path(args.output) / latent_rel
    info = _finished(dst, loaded.config.architecture_hash())
    if info is not None:
        return _entry(source, latent_rel, info), False
    if not may_encode:
        return {"source": source, "latent": latent_rel, "status": "pending"}, False
    _remove_stale_temporaries(dst)
    try:
        _encode_one(loaded, Path(args.input) / source, dst, args, chunk_frames)
    except (ValueError, FileNotFoundError) as err:  # a bad video: recorded, the rest go on
        _console.say(f"cdt-fast encode-dataset: skipped {source}: {err}")
        return {"source": source, "latent": latent_rel, "status": "error", "error": str(err)}, False
    return _entry(source, latent_rel, latents.read_latent_metadata(dst)), True


def _work(args, sources: List[str], rank: int):
    """Encode this rank's videos; returns (manifest entries, the model's config)."""
    chunk_frames = args.chunk_frames
    loaded = _common.load_model(args)
    entries, encoded = [], 0
    with _console.progress(
        len(sources), f"rank {rank}", args.quiet or rank != 0, unit="video"
    ) as bar:
        for source in sources:
            may_encode = args.max_items is None or encoded < args.max_items
            entry, new = _item(loaded, source, args, chunk_frames, may_encode)
            entries.append(entry)
            encoded += new
            bar.update(1)
    if not args.quiet:
        status = [e["status"] for e in entries]
        print(
            f"rank {rank}: {encoded} encoded, {status.count('ok') - encoded} already done, "
            f"{status.count('error')} failed, {status.count('pending')} pending, with "
            f"{loaded.description}",
            file=sys.stderr,
        )
    return entries, loaded.config


def _write_json(path: Path, data: dict) -> None:
    from ..checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


def _merge(out: Path, world: int, config, args: argparse.Namespace) -> dict:
    entries: List[dict] = []
    for r in range(world):
        part = out / f".manifest.rank{r}-of-{world}.json"
        entries.extend(json.loads(part.read_text())["items"])
    entries.sort(key=lambda e: e["source"])
    counts = {s: sum(e["status"] == s for e in entries) for s in ("ok", "error", "pending")}
    manifest = {
        "format_version": MANIFEST_VERSION,
        "complete": counts["ok"] == len(entries),
        "counts": counts,
        "model": config.name,
        "architecture_hash": config.architecture_hash(),
        "latent_scale": config.latent_scale,
        "config": config.to_dict(),
        "input": str(Path(args.input).resolve()),
        "resize": resize_record(args),
        "items": entries,
    }
    _write_json(out / MANIFEST, manifest)
    for r in range(world):
        (out / f".manifest.rank{r}-of-{world}.json").unlink()
    return manifest


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o: {out} exists and is not a directory")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"-o: cannot write to {out}")
        return
    try:
        video_io.check_writable(out)
    except video_io.VideoError as err:
        raise ValueError(f"-o: {err}") from None


def _encode_dataset(args: argparse.Namespace) -> int:
    _common.check_args(args)
    if args.max_items is not None and args.max_items < 0:
        raise ValueError(f"--max-items must be >= 0, got {args.max_items}")
    if args.timeout_hours <= 0:
        raise ValueError(f"--timeout-hours must be positive, got {args.timeout_hours}")
    if args.crop is not None and args.size is not None:
        raise ValueError("--crop and --size both resize the frames: give one of them")
    record = resize_record(args)
    _check_output_dir(Path(args.output))
    _check_same_resize(Path(args.output), record)
    rank, world, local = _ranks()
    if args.device in ("auto", "cuda") and world > 1:
        import torch

        if torch.cuda.is_available():  # one GPU per local rank
            args.device = f"cuda:{local % torch.cuda.device_count()}"
    videos = _find_videos(Path(args.input))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    distributed = _init_group(world, args.timeout_hours)
    try:
        entries, config = _work(args, videos[rank::world], rank)
        _write_json(out / f".manifest.rank{rank}-of-{world}.json", {"rank": rank, "items": entries})
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        if rank != 0:
            return int(any(e["status"] == "error" for e in entries))
        manifest = _merge(out, world, config, args)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    counts = manifest["counts"]
    print(
        f"{args.input}: {len(videos)} videos -> {out}: {counts['ok']} done, "
        f"{counts['error']} failed, {counts['pending']} pending; manifest {out / MANIFEST}"
    )
    return 1 if counts["error"] else 0


def register(sub) -> None:
    p = sub.add_parser(
        "encode-dataset",
        help="encode every video of a folder tree to latents",
        description="Encode every video under DIR into OUT/<path>.safetensors "
        "with a manifest OUT/manifest.json. Rerunning skips finished "
        "videos. Under torchrun (RANK/WORLD_SIZE) each rank takes a "
        "disjoint share and rank 0 writes the manifest.",
    )
    p.add_argument("input", metavar="DIR")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    _common.add_size_arg(p)
    p.add_argument(
        "--crop",
        metavar="HxW[,HxW...]",
        help="scale each video to cover HxW (aspect ratio kept) and cut out the centre; with "
        "several sizes, each video takes the one nearest its aspect ratio (aspect-ratio buckets). "
        "For gen-train, use sides that are multiples of 16. Instead of --size",
    )
    _common.add_allow_truncated_arg(p)
    p.add_argument(
        "--max-items",
        type=int,
        metavar="N",
        help="encode at most N new videos per rank in this run, then stop (rerun to continue)",
    )
    p.add_argument(
        "--timeout-hours",
        type=float,
        default=72.0,
        help="how long ranks wait for each other at the end (default 72)",
    )
    _common.add_model_args(p)
    _common.add_quiet_arg(p)
    p.set_defaults(func=_encode_dataset)
