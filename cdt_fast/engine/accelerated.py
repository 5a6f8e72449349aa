"""AcceleratedCDT: the reference CDT's API over compiled plans, CUDA graphs and streamed chunks."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from .. import chunking, tiling
from ..config import CDTConfig
from ..reference import CDT, DiagonalGaussian
from ..validation import (
    check_chunk_frames,
    check_finite,
    check_generator,
    check_latent,
    check_noise,
    check_steps,
    check_video,
)
from .convert import as_cdt
from .dispatch import Measurements, OpTable
from .graphs import CAPTURE_METHODS, CudaGraphCapture
from .layout import activation_layout, channel_alignment
from .memory import MemoryModel, halve
from .noise import FramewiseNoise, NoiseSlices
from .plan import ContextDecoderPlan, EncoderPlan, UNetPlan
from .registry import CDT_OPS
from .sessions import DecodeSession, EncodeSession, Session, graph_state, run_or_none_on_oom
from .streams import FrameQueue

__all__ = ["AcceleratedCDT", "accelerate"]

Frames = Union[torch.Tensor, Iterable[torch.Tensor]]
_SESSIONS_KEPT = 4


class AcceleratedCDT(nn.Module):
    """A CDT with the reference's API (``encode``, ``decode``, ``decode_stream``, ``forward``) that
    runs through the engine: packed weights, per-op backends, preallocated stream state, CUDA
    graphs, streaming and out-of-memory fallback. Build it with :func:`accelerate`.

    Its ``state_dict()`` is the upstream-format state dict of its (converted) weights. Moving it
    with ``.to()`` is not supported: accelerate the model again for another device or dtype.
    """

    def __init__(
        self,
        cdt: CDT,
        backend: str = "auto",
        dtype: Optional[torch.dtype] = None,
        device=None,
        table=None,
        cuda_graphs=True,
        measurements: Optional[Measurements] = None,
        env=None,
    ):
        super().__init__()
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        device = torch.device(device) if device is not None else cdt.device
        dtype = dtype or cdt.dtype
        self.ops = OpTable(
            backend, device, table=table, measurements=measurements, env=env, ops=CDT_OPS
        )
        self.memory_format = activation_layout(device, self.ops)
        cdt = cdt.to(device=device, dtype=dtype).to(memory_format=self.memory_format).eval()
        cdt.requires_grad_(False)  # inference only: no autograd graph may chain chunks
        self.model = cdt.model  # upstream's state-dict names
        object.__setattr__(self, "reference", cdt)  # shares ``model``; not a second submodule
        self.config: CDTConfig = cdt.config
        self.latent_scale = cdt.latent_scale
        self.sample_steps = cdt.sample_steps
        if not isinstance(cuda_graphs, bool) and not all(
            callable(getattr(cuda_graphs, m, None)) for m in CAPTURE_METHODS
        ):
            raise TypeError(
                "cuda_graphs must be True, False or a capture object with methods "
                f"{', '.join(CAPTURE_METHODS)} (see cdt_fast.engine.graphs.CudaGraphCapture), "
                f"got {type(cuda_graphs).__name__}"
            )
        # One capture object for every session: their warm-ups and captures share its side
        # stream, and with it the BLAS handle and workspace torch keeps per stream.
        self.cuda_graphs = CudaGraphCapture() if cuda_graphs is True else cuda_graphs
        fmt = self.memory_format
        self.encoder_plan = EncoderPlan(cdt.context_model, self.ops, fmt)
        self.context_plan = ContextDecoderPlan(cdt.context_model, self.ops, fmt)
        self.unet_plan = UNetPlan(
            cdt.unet, self.ops, fmt, align_channels=channel_alignment(device, self.ops)
        )
        self.memory = MemoryModel(self.config)
        self._sessions: "OrderedDict[tuple, Session]" = OrderedDict()

    def _apply(self, fn, *args, **kwargs):
        # The plans hold packed copies (fp32 islands) and sessions hold device buffers: moving
        # or casting the parameters alone would leave them behind.
        raise RuntimeError(
            "an AcceleratedCDT cannot be moved or cast; call "
            "cdt_fast.accelerate(model, dtype=..., device=...) again"
        )

    # -- properties of the reference ---------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.reference.dtype

    @property
    def device(self) -> torch.device:
        return self.reference.device

    @property
    def z_dim(self) -> int:
        return self.config.latent_dim

    def output_shape(self, z_shape):
        return self.reference.output_shape(z_shape)

    def initial_noise(self, z: torch.Tensor, generator: Optional[torch.Generator] = None):
        """The reference's noise draw for a whole latent ``z`` (same RNG use, same values)."""
        return self.reference.initial_noise(z, generator)

    def _reference_noise(self, z: torch.Tensor, generator: Optional[torch.Generator]):
        """The reference's draw, left on the device it was drawn on (a CPU generator's noise
        stays in host memory; chunks move to the device one at a time)."""
        drawn_on = generator.device if generator is not None else z.device
        stand_in = torch.zeros((), dtype=z.dtype, device=drawn_on).expand(z.shape)
        return self.reference.initial_noise(stand_in, generator)

    def extra_repr(self) -> str:
        return f"config={self.config}, dtype={self.dtype}, device={self.device}, ops={self.ops!r}"

    @property
    def dispatch_table(self):
        """The :class:`~cdt_fast.engine.DispatchTable` this engine decides by (with
        ``backend="tune"``: the winners measured so far, to ``save`` and give to ``table=``)."""
        return self.ops.decisions

    def backend_report(self) -> dict:
        """Which backend runs each op and why, the choice made per (op, shape class), auto's
        fallbacks (op -> (wanted, used, why)), tune's rejected candidates and the CUDA graph
        state of each live session."""
        return {
            "ops": self.ops.report(),
            "decided": self.ops.decided(),
            "fallbacks": dict(self.ops.fallbacks),
            "rejected": dict(self.ops.measurements.rejected),
            "graphs": {k: graph_state(s.graphs) for k, s in self._sessions.items()},
        }

    def execution_record(self) -> dict:
        """What ran since the engine was built or :meth:`reset_execution_record`:
        ``{"ops": {op: {backend: calls}}, "cuda_graphs": {"state", "reason", "captures",
        "replays", "eager"}}``.

        Each op call is counted under the backend that served it; a block op served "composed"
        counts as its parts, under their own names and backends. A CUDA graph replay runs no
        Python: the ops inside a captured graph ran on the backends they were captured with, so
        they are counted when the step runs eagerly or is captured, and each replay adds its
        capture's counts again. ``cuda_graphs["state"]`` is "replayed" when some chunk step
        replayed a graph, "captured" when graphs were captured but none replayed, else "off";
        ``reason`` says why the last eager chunk step ran without a graph (None when none did).
        """
        return self.ops.record.as_dict()

    def reset_execution_record(self) -> None:
        """Start :meth:`execution_record` afresh (e.g. after warm-up calls)."""
        self.ops.record.reset()

    # -- sessions ------------------------------------------------------------------------------
    def _session(self, key: tuple, make: Callable[[], Session]) -> Session:
        session = self._sessions.get(key)
        if session is not None and not session.busy:
            self._sessions.move_to_end(key)
        else:  # none yet, or in use by another live stream: state must never be shared
            session = make()
            if key not in self._sessions:
                self._sessions[key] = session
                while len(self._sessions) > _SESSIONS_KEPT:
                    self._sessions.popitem(last=False)
        session.reset()
        return session

    def _after_oom(self, session: Session) -> bool:
        """Free what can be freed before a retry: this stream's graphs and every idle session's
        (their pools). True when some were held: the same chunk is then worth a retry (an eager
        chunk can run out of memory only because a pool was held beside it)."""
        held = False
        for graphs in [session.graphs] + [o.graphs for o in self._sessions.values() if not o.busy]:
            held |= bool(graphs.graphs)
            graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return held

    # -- encode --------------------------------------------------------------------------------
    def _check_piece(self, piece, name: str) -> None:
        if isinstance(piece, torch.Tensor) and piece.dim() == 5 and piece.shape[2] > 0:
            check_video(piece[:, :, :1], name, self.config.space_factor)
            check_finite(piece, name)
        else:
            check_video(piece, name, self.config.space_factor)

    def encode_params(
        self,
        x: Frames,
        chunk_frames: Optional[int] = None,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> Iterator[torch.Tensor]:
        """Posterior parameters (fp32) chunk by chunk, from a video tensor, a lazily sliced clip
        (``shape`` + ``x[:, :, a:b]``, read front to back) or an iterable of frame chunks
        [B, 3, t, H, W] of any lengths (1+4k frames in all). ``tile`` (tensor ``x`` only): all
        spatial tiles advance chunk by chunk together, as :meth:`cdt_fast.CDT.encode_chunks`."""
        tf = self.config.time_factor
        chunk = check_chunk_frames(chunk_frames, tf)
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        if tiles is not None:
            return self._tiled_encode(x, chunk, tiles, lockstep=True)
        if isinstance(x, torch.Tensor):
            check_video(x, "x", self.config.space_factor)
            queue = FrameQueue(x, lambda *_: None, "x")
        else:
            queue = FrameQueue(x, self._check_piece, "x")
            if queue.total is not None and (queue.total - 1) % tf:
                raise ValueError(f"x must have T = 1+{tf}k frames, got T={queue.total}")
        return self._encode_chunks(queue, chunk)

    # the reference's name for the same thing (the CLI streams clips through it)
    encode_chunks = encode_params

    def _tiled_encode(self, x, chunk: Optional[int], tiles: tiling.Tiling, lockstep: bool):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor when tiling, got {type(x).__name__}")
        check_video(x, "x", self.config.space_factor)
        return tiling.tiled_encode(
            x,
            tiles,
            self.config.space_factor,
            lambda x_tile: self.encode_params(x_tile.contiguous(), chunk),
            lockstep=lockstep,
            time_factor=self.config.time_factor,
        )

    @torch.no_grad()  # on the generator itself: it runs after encode_params has returned
    def _encode_chunks(self, queue: FrameQueue, chunk: Optional[int]) -> Iterator[torch.Tensor]:
        tf = self.config.time_factor
        if queue.empty:
            raise ValueError("x holds no frames")
        b, _, _, height, width = queue.peek(1).shape
        session = self._session(("encode", b, height, width), lambda: EncodeSession(self))
        default = chunk is None
        if default:
            graphs = session.graphs.enabled
            chunk = session.chunk or self.memory.encode_chunk(
                b, height, width, self.dtype, self.device, graphs=graphs
            )
            session.chunk = chunk
        # upstream's plan when the length is known (first chunk 1 + remainder), else 1 frame first
        first = 1 + (queue.total - 1) % chunk if queue.total else 1
        pos = 0
        session.busy = True
        try:
            while True:
                want = first if pos == 0 else chunk
                n = queue.available(want)
                if n == 0:
                    break
                if (n - (1 if pos == 0 else 0)) % tf:
                    raise ValueError(
                        f"x must hold 1+{tf}k frames in all; it ended {pos + n} frames in"
                    )
                params = run_or_none_on_oom(session, queue.peek(n))
                if params is None:  # out of memory: smaller chunks from the same position
                    if self._after_oom(session):
                        continue  # graphs held memory: the same chunk first, without them
                    smaller = halve(chunk, tf)
                    if pos == 0 and first > 1:
                        first, chunk = 1, smaller or chunk
                    elif smaller is None:
                        raise torch.OutOfMemoryError(
                            f"CUDA out of memory encoding {n} frames at the smallest chunk"
                        )
                    else:
                        chunk = smaller
                    if default:
                        session.chunk = chunk
                    continue
                queue.drop(n)
                pos += n
                yield params.clone(memory_format=torch.contiguous_format)
        finally:
            session.busy = False

    @torch.no_grad()
    def encode(
        self,
        x: Frames,
        return_posterior: bool = False,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
        **_upstream_kwargs,
    ):
        """As :meth:`cdt_fast.CDT.encode` (``tile``: one spatial tile at a time, tensor ``x``
        only); ``x`` may also be an iterable of frame chunks."""
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        if tiles is None:
            params = torch.cat(list(self.encode_params(x, chunk_frames)), dim=2)
        else:
            chunk = check_chunk_frames(chunk_frames, self.config.time_factor)
            params = self._tiled_encode(x, chunk, tiles, lockstep=False)
        posterior = DiagonalGaussian(params)
        z = posterior.mode() * scale_factor
        return (z, posterior) if return_posterior else z

    @torch.no_grad()
    def encode_stream(
        self,
        x: Frames,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> Iterator[torch.Tensor]:
        """Latent chunks (posterior mode) as each encode chunk finishes; they can feed
        :meth:`decode_stream` directly."""
        params = self.encode_params(x, chunk_frames, tile, tile_overlap)  # validates now
        return (DiagonalGaussian(p).mode() * scale_factor for p in params)

    # -- decode --------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        z: Frames,
        steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
        **_upstream_kwargs,
    ) -> torch.Tensor:
        """As :meth:`cdt_fast.CDT.decode` (same noise draw for a latent tensor, so the same RNG
        state gives the same video; ``tile``: one spatial tile at a time, tensor ``z`` only);
        ``z`` may also be an iterable of latent chunks."""
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        if tiles is not None:
            return self._tiled_decode(z, steps, noise, generator, chunk_frames, scale_factor, tiles)
        chunks = self._decode_chunks(z, steps, noise, generator, chunk_frames, scale_factor)
        if not isinstance(z, torch.Tensor):
            return torch.cat([x.clone() for _, _, x in chunks], dim=2)  # clones: x is reused
        out = torch.empty(self.output_shape(z.shape), dtype=torch.float32, device=self.device)
        for a, b, x in chunks:
            out[:, :, a:b].copy_(x)
        return out

    def decode_stream(
        self,
        z: Frames,
        steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        chunk_frames: Optional[int] = None,
        scale_factor: float = 1.0,
        uint8: bool = False,
        tile: Optional[Union[int, Tuple[int, int], tiling.Tiling]] = None,
        tile_overlap: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> Iterator[torch.Tensor]:
        """Like :meth:`decode`, but yields each chunk's frames ([B, 3, t, H, W] fp32, or with
        ``uint8=True`` [B, t, H, W, 3] uint8 for video writers) as soon as they are done.

        ``z`` may be an iterable of latent chunks [B, C, t, h, w] (any lengths): then memory stays
        constant however long the stream, and without ``noise`` each latent frame's noise is drawn
        separately (same distribution as the reference's one-shot draw, not the same values).
        ``tile`` (tensor ``z`` only): all spatial tiles advance chunk by chunk together.
        """
        tiles = tiling.resolve(tile, tile_overlap, self.config.space_factor)
        if tiles is not None:
            blended = self._tiled_decode(
                z, steps, noise, generator, chunk_frames, scale_factor, tiles, lockstep=True
            )
            if uint8:
                return (self.ops("to_uint8_frames", x) for x in blended)
            return blended
        chunks = self._decode_chunks(z, steps, noise, generator, chunk_frames, scale_factor)
        if uint8:
            return (self.ops("to_uint8_frames", x) for _, _, x in chunks)
        return (x.clone(memory_format=torch.contiguous_format) for _, _, x in chunks)

    def _tiled_decode(
        self, z, steps, noise, generator, chunk_frames, scale_factor, tiles, lockstep=False
    ):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor when tiling, got {type(z).__name__}")
        check_latent(z, self.config.latent_dim, "z")
        check_noise(noise, self.output_shape(z.shape))
        check_generator(generator)
        if noise is None:  # drawn whole, as untiled, so that each tile sees its slice of it
            noise = self._reference_noise(z, generator)

        def stream_of(z_tile, noise_tile):
            chunks = self._decode_chunks(z_tile, steps, noise_tile, None, chunk_frames, 1.0)
            return (x for _, _, x in chunks)

        return tiling.tiled_decode(
            z / scale_factor, noise, tiles, self.config.space_factor, stream_of, lockstep=lockstep
        )

    def _decode_chunks(self, z, steps, noise, generator, chunk_frames, scale_factor):
        steps = check_steps(self.sample_steps if steps is None else steps)
        check_generator(generator)
        chunk = check_chunk_frames(chunk_frames)
        if isinstance(z, torch.Tensor):
            check_latent(z, self.config.latent_dim, "z")
            check_noise(noise, self.output_shape(z.shape))
            if noise is None:
                noise = self._reference_noise(z, generator)
            queue = FrameQueue(z, lambda *_: None, "z")
        else:
            if noise is not None and not isinstance(noise, torch.Tensor):
                raise TypeError(f"noise must be a torch.Tensor or None, got {type(noise).__name__}")
            queue = FrameQueue(z, lambda p, n: check_latent(p, self.config.latent_dim, n), "z")
        return self._decode_loop(queue, steps, noise, generator, chunk, scale_factor)

    @torch.no_grad()
    def _decode_loop(
        self, queue: FrameQueue, steps: int, noise, generator, chunk, scale_factor
    ) -> Iterator[Tuple[int, int, torch.Tensor]]:
        cfg, tf = self.config, self.config.time_factor
        if queue.empty:
            raise ValueError("z holds no frames")
        b, _, _, h, w = queue.peek(1).shape
        s = cfg.space_factor
        session = self._session(("decode", b, h, w, steps), lambda: DecodeSession(self, b, steps))
        default = chunk is None
        if default:
            graphs = session.graphs.enabled
            chunk = session.chunk or self.memory.decode_chunk(
                b, h * s, w * s, self.dtype, self.device, graphs=graphs
            )
            session.chunk = chunk
        if noise is None:
            noise_of = FramewiseNoise(
                (b, cfg.channels, tf, h * s, w * s), tf, generator, self.device
            )
        else:
            noise_of = NoiseSlices(noise, tf)
        pos = 0
        session.busy = True
        try:
            while True:
                n = queue.available(chunk)
                if n == 0:
                    break
                a, stop = chunking.video_span(pos, pos + n, tf)
                # raw chunks: a replayed graph copies them straight into its static inputs
                z_chunk = queue.peek(n) / scale_factor
                x = noise_of(pos, pos + n)
                out = run_or_none_on_oom(session, z_chunk, x)
                if out is None:  # out of memory: smaller chunks from the same position
                    del z_chunk, x
                    if self._after_oom(session):
                        continue  # graphs held memory: the same chunk first, without them
                    chunk = halve(chunk)
                    if chunk is None:
                        raise torch.OutOfMemoryError(
                            f"CUDA out of memory decoding {n} latent frame(s) at the smallest chunk"
                        )
                    if default:
                        session.chunk = chunk
                    continue
                queue.drop(n)
                noise_of.release(pos + n)
                pos += n
                yield a, stop, out
        finally:
            session.busy = False

    # -- round trip: the reference's own methods, over this class's encode/decode --------------
    forward = CDT.forward
    forward_with_info = CDT.forward_with_info


def accelerate(
    model,
    backend: str = "auto",
    dtype: Optional[torch.dtype] = None,
    *,
    config: Optional[CDTConfig] = None,
    device=None,
    table=None,
    cuda_graphs=True,
    measurements: Optional[Measurements] = None,
) -> AcceleratedCDT:
    """A drop-in accelerated CDT.

    ``model``: a :class:`cdt_fast.CDT`, a module with an upstream-format state dict (e.g.
    upstream's ``ConditionedDiffusionTokenizer``) or such a state dict; without ``config`` the
    architecture is inferred from the weights' shapes (see :func:`cdt_fast.engine.infer_config`).
    The given model is not modified. ``backend``: "auto" (per op and shape class, from the
    decision table ``table``: a saved :class:`~cdt_fast.engine.DispatchTable`, its path, or None
    for the committed one), "tune" (measured on the first call of each shape class; the winners
    are ``engine.dispatch_table``), "triton", "cuda", "cpp" or "torch", or a spec such as
    "auto,causal_conv3d=torch"; the ``CDT_FAST_BACKEND`` environment variable fills it in only
    when it is left at "auto". ``dtype``: compute dtype (default: the model's). ``device``:
    default the model's. ``cuda_graphs``: on CUDA, capture each chunk step the second time its
    key (shapes, steps, stream position) is seen and replay it from then on, e.g. from the second
    decode of a clip shape (``False`` opts out; a capture object such as
    :class:`cdt_fast.engine.graphs.CudaGraphCapture` replaces the CUDA one, e.g. a stand-in for
    tests).
    """
    return AcceleratedCDT(
        as_cdt(model, config),
        backend=backend,
        dtype=dtype,
        device=device,
        table=table,
        cuda_graphs=cuda_graphs,
        measurements=measurements,
    )
