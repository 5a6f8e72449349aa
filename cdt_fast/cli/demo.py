"""``cdt-fast demo``: a quick encode/decode of a random clip."""

from __future__ import annotations

import argparse
import time


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .. import CDT, CDTConfig, randomize_

    config = CDTConfig.preset(args.preset)
    if args.tiny:
        config = CDTConfig.preset(
            args.preset,
            context_dim=8,
            unet_dim=8,
            latent_dim=4,
            out_channels=min(config.out_channels, 8),
        )
    model = randomize_(CDT(config), seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, args.frames, args.size, args.size, generator=g) * 2 - 1
    t0 = time.perf_counter()
    z = model.encode(x)
    t1 = time.perf_counter()
    y = model.decode(z, generator=g)
    t2 = time.perf_counter()
    print(
        f"CDT-{args.preset}{' (tiny widths)' if args.tiny else ''}, random weights: "
        f"video {list(x.shape)} -> latent {list(z.shape)} -> video {list(y.shape)}"
    )
    print(f"encode {1e3 * (t1 - t0):.0f} ms, decode {1e3 * (t2 - t1):.0f} ms on {model.device}")
    return 0


def register(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="encode and decode a random clip with random weights",
        description="Encode and decode a random clip with seeded random weights.",
    )
    demo.add_argument("--preset", choices=["base", "small"], default="small")
    demo.add_argument("--frames", type=int, default=9, help="1+4k frames (default 9)")
    demo.add_argument("--size", type=int, default=64, help="height = width, a multiple of 8")
    demo.add_argument("--tiny", action="store_true", help="use narrow widths (fast on CPU)")
    demo.set_defaults(func=_demo)
