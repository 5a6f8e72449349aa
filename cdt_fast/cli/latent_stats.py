"""``cdt-fast latent-stats LATENTS_DIR``: per-channel mean and std of an ``encode-dataset`` folder,
stored in its manifest for the generator to normalise with."""

from __future__ import annotations

import argparse


def _latent_stats(args: argparse.Namespace) -> int:
    from ..generation.stats import latent_stats
    from ..train.distributed import setup_distributed

    dist = setup_distributed("cpu")  # under torchrun: each rank reads a share, gloo gathers
    moments = latent_stats(
        args.input,
        rank=dist.rank,
        world_size=dist.world_size,
        gather=dist.gather_objects if dist.enabled else None,
        write=not args.dry_run,
    )
    if dist.is_main:
        mean = ", ".join(f"{v:+.4f}" for v in moments.mean.tolist())
        std = ", ".join(f"{v:.4f}" for v in moments.std.tolist())
        where = (
            "not written (--dry-run)" if args.dry_run else f"written to {args.input}/manifest.json"
        )
        print(f"{args.input}: {moments.count} values per channel\n  mean [{mean}]\n  std  [{std}]")
        print(f"  {where}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "latent-stats",
        help="per-channel mean/std of an encode-dataset folder, for the generator",
        description="One streaming pass over the latents an encode-dataset manifest lists: "
        "per-channel mean and std (exact; under torchrun each rank reads a share and the parts "
        "are merged), stored in the manifest under 'latent_stats'. gen-train normalises with "
        "them (without them, with the tokenizer's latent_scale).",
    )
    p.add_argument("input", metavar="LATENTS_DIR")
    p.add_argument("--dry-run", action="store_true", help="print the statistics, write nothing")
    p.set_defaults(func=_latent_stats)
