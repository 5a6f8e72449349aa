"""Zero-copy cache assembly for one causal conv over a stream of chunks.

Upstream, per chunk and per conv: ``cat([cache, x])``, ``F.pad``, the conv, ``cache = x[-2:].clone()``.
Here the conv owns one channels-last buffer laid out ``[history frames | chunk frames]`` along time:

- the producer of the conv's input writes its output straight into :meth:`CausalConvCache.input_view`
  (e.g. as a Triton kernel's ``out=``), or the chunk is copied there once by :meth:`__call__`;
- the conv reads the buffer in place: the Triton kernel reads the missing history (stream start)
  and the spatial border as padding through masks/clamps; cuDNN gets the zero spatial padding as
  a conv argument, and for ``pad_mode="replicate"`` the buffer carries a spatial border that is
  refreshed by a border-only copy;
- refreshing the cache copies the last ``history`` frames to the front of the buffer, nothing else.

The results equal :func:`cdt_fast.functional.causal_conv3d` with ``past`` from
:func:`cdt_fast.functional.causal_conv3d_history`, chunk after chunk.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import functional as CF
from .conv_select import ConvSelector, _finish, apply_epilogue, triton_conv_module

__all__ = ["CausalConvCache"]


class CausalConvCache:
    """One causal conv (weights, geometry) plus its stream state in a preallocated buffer.

    ``history``: frames of context before each output window (``kt - 1`` for CDT's convs).
    ``selector``: a :class:`~cdt_fast.ops.conv_select.ConvSelector` shared by the model's convs
    (default: a private ``"auto"`` one).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        history: int,
        space_padding: Tuple[int, int] = (0, 0),
        stride: Sequence[int] = (1, 1, 1),
        pad_mode: str = "zeros",
        upsample2x: bool = False,
        selector: Optional[ConvSelector] = None,
    ):
        if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
            raise ValueError("weight must be a 5-D tensor [C_out, C_in, kt, kh, kw]")
        if not isinstance(history, int) or isinstance(history, bool) or history < 0:
            raise ValueError(f"history must be an int >= 0, got {history!r}")
        if pad_mode not in CF.PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(CF.PAD_MODES)}, got {pad_mode!r}")
        self.weight, self.bias = weight, bias
        self.history = history
        self.space_padding = tuple(int(p) for p in space_padding)
        self.stride = tuple(int(s) for s in stride)
        self.pad_mode = pad_mode
        self.upsample2x = bool(upsample2x)
        self.selector = selector or ConvSelector()
        # cuDNN cannot replicate-pad, so a replicate conv's buffer carries the spatial border.
        replicate_border = pad_mode == "replicate" and not upsample2x
        self.border = self.space_padding if replicate_border else (0, 0)
        self._buffer: Optional[torch.Tensor] = None
        self._filled = 0  # valid history frames, stored at [history - filled, history)
        self._weights = {}  # dtype -> (packed weight, cuDNN weight, bias), prepared once

    @classmethod
    def from_layer(
        cls, layer, selector: Optional[ConvSelector] = None, *, upsample2x: bool = False
    ) -> "CausalConvCache":
        """From a :class:`cdt_fast.reference.layers.CausalConv3d` (its weights are shared);
        ``upsample2x`` for the conv of CDT-base's ``Upsample``, fed the un-upsampled frames."""
        return cls(
            layer.weight,
            layer.bias,
            history=layer.history,
            space_padding=layer.space_padding,
            stride=layer.stride,
            pad_mode=layer.pad_mode,
            upsample2x=upsample2x,
            selector=selector,
        )

    # -- state -----------------------------------------------------------------------------
    @property
    def filled(self) -> int:
        """Frames of history held for the next chunk (0 at a stream's start)."""
        return self._filled

    @property
    def buffer(self) -> Optional[torch.Tensor]:
        return self._buffer

    def reset(self) -> None:
        """Start a new stream (the buffer is kept)."""
        self._filled = 0

    def history_frames(self) -> Optional[torch.Tensor]:
        """The cached frames (a view), as :func:`cdt_fast.functional.causal_conv3d_history` gives."""
        if self._buffer is None or not self._filled:
            return None
        return self._interior(self.history - self._filled, self.history)

    def reserve(
        self, batch: int, frames: int, height: int, width: int, *, dtype: torch.dtype, device
    ) -> None:
        """Make room for chunks of up to ``frames`` frames; keeps the history already cached."""
        cin = self.weight.shape[1]
        bh, bw = self.border
        shape = (batch, cin, self.history + frames, height + 2 * bh, width + 2 * bw)
        old = self._buffer
        if (
            old is not None
            and old.shape[:2] == shape[:2]
            and old.shape[3:] == shape[3:]
            and old.shape[2] >= shape[2]
            and old.dtype == dtype
            and old.device == torch.device(device)
        ):
            return
        fresh = torch.empty(
            shape, dtype=dtype, device=device, memory_format=torch.channels_last_3d
        ).zero_()
        if old is not None and self._filled:
            if old.shape[:2] != shape[:2] or old.shape[3:] != shape[3:]:
                raise ValueError(
                    f"chunk of shape {(batch, cin, frames, height, width)} does not "
                    f"continue this stream's frames of {tuple(old.shape)}; reset() first"
                )
            fresh[:, :, : self.history] = old[:, :, : self.history]
        self._buffer = fresh

    def input_view(self, frames: int) -> torch.Tensor:
        """Where the producer writes the next chunk: a [B, C_in, frames, H, W] channels-last view
        of the buffer (call :meth:`reserve` first)."""
        if self._buffer is None:
            raise RuntimeError("call reserve(batch, frames, height, width, dtype=, device=) first")
        if not 1 <= frames <= self._buffer.shape[2] - self.history:
            raise ValueError(
                f"frames must be in [1, {self._buffer.shape[2] - self.history}], got {frames}"
            )
        return self._interior(self.history, self.history + frames)

    def _interior(self, t0: int, t1: int) -> torch.Tensor:
        bh, bw = self.border
        buf = self._buffer
        return buf[:, :, t0:t1, bh : buf.shape[3] - bh, bw : buf.shape[4] - bw]

    # -- running ---------------------------------------------------------------------------
    def __call__(
        self,
        x: Optional[torch.Tensor] = None,
        *,
        frames: Optional[int] = None,
        out: Optional[torch.Tensor] = None,
        epilogue=None,
    ) -> torch.Tensor:
        """The conv of the next chunk of the stream, then the cache refresh.

        Either pass the chunk ``x`` (copied into the buffer unless it already is
        ``input_view(frames)``), or ``frames`` after writing the chunk into :meth:`input_view`.
        """
        if x is not None:
            if not isinstance(x, torch.Tensor) or x.dim() != 5:
                raise ValueError("x must be a 5-D tensor [B, C, T, H, W]")
            if x.shape[1] != self.weight.shape[1]:
                raise ValueError(
                    f"x has {x.shape[1]} channels, the conv expects {self.weight.shape[1]}"
                )
            if frames is not None and frames != x.shape[2]:
                raise ValueError(f"frames={frames} disagrees with x's {x.shape[2]} frames")
            frames = x.shape[2]
            b, _, _, h, w = x.shape
            self.reserve(b, frames, h, w, dtype=x.dtype, device=x.device)
            view = self.input_view(frames)
            if not (view.data_ptr() == x.data_ptr() and view.stride() == x.stride()):
                view.copy_(x)
        elif frames is None:
            raise ValueError("pass the chunk x, or frames= after writing into input_view(frames)")
        view = self.input_view(frames)
        runners = {"triton": self._run_triton, "cudnn": self._run_cudnn, "torch": self._run_torch}
        key = (
            "cache",
            tuple(view.shape),
            self._filled,
            tuple(self.weight.shape),
            view.dtype,
            view.device,
            self.history,
            self.space_padding,
            self.stride,
            self.pad_mode,
            self.upsample2x,
            epilogue is not None,
        )
        choice = self.selector.pick(
            key,
            view.device,
            {n: (lambda r=r: r(frames, out, epilogue)) for n, r in runners.items()},
        )
        y = runners[choice](frames, out, epilogue)
        self._refresh(frames)
        return y

    def _prepared(self, dtype: torch.dtype):
        if dtype not in self._weights:
            module = triton_conv_module()
            w = self.weight.detach()
            packed = module.pack_weight(w, dtype) if not isinstance(module, str) else None
            dense = w.to(dtype).contiguous(memory_format=torch.channels_last_3d)
            bias = self.bias.detach().to(dtype) if self.bias is not None else None
            self._weights[dtype] = (packed, dense, bias)
        return self._weights[dtype]

    def _run_triton(self, frames, out, epilogue):
        packed, _, bias = self._prepared(self._buffer.dtype)
        src = self._interior(self.history - self._filled, self.history + frames)
        return triton_conv_module().causal_conv3d_frames(
            src,
            packed,
            bias,
            front=self.history - self._filled,
            space_padding=self.space_padding,
            stride=self.stride,
            pad_mode=self.pad_mode,
            upsample2x=self.upsample2x,
            out=out,
            epilogue=epilogue,
        )

    def _run_cudnn(self, frames, out, epilogue):
        _, dense, bias = self._prepared(self._buffer.dtype)
        self._fill_front(frames)
        if self.upsample2x:  # cuDNN has no upsampling loads: materialise (reference arrangement)
            x = CF.upsample_nearest2x(self._interior(0, self.history + frames))
            ph, pw = self.space_padding
            if self.pad_mode == "replicate" and (ph or pw):
                x = F.pad(x, (pw, pw, ph, ph, 0, 0), mode="replicate")
                ph = pw = 0
            y = F.conv3d(
                x.contiguous(memory_format=torch.channels_last_3d),
                dense,
                bias,
                self.stride,
                (0, ph, pw),
            )
        elif self.pad_mode == "replicate":
            self._fill_border(frames)
            y = F.conv3d(self._buffer[:, :, : self.history + frames], dense, bias, self.stride)
        else:
            y = F.conv3d(
                self._buffer[:, :, : self.history + frames],
                dense,
                bias,
                self.stride,
                (0, *self.space_padding),
            )
        return _finish(apply_epilogue(y, epilogue), out)

    def _run_torch(self, frames, out, epilogue):
        _, _, bias = self._prepared(self._buffer.dtype)
        y = CF.causal_conv3d(
            self.input_view(frames),
            self.weight,
            bias,
            past=self.history_frames(),
            history=self.history,
            space_padding=self.space_padding,
            stride=self.stride,
            pad_mode=self.pad_mode,
            upsample2x=self.upsample2x,
        )
        return _finish(apply_epilogue(y, epilogue), out)

    def _fill_front(self, frames: int) -> None:
        """Materialise the missing history (stream start only): zeros, or copies of the first
        frame for replicate padding, so cuDNN can read the buffer from frame 0."""
        missing = self.history - self._filled
        if not missing:
            return
        front = self._buffer[:, :, :missing]
        if self.pad_mode == "zeros":
            front.zero_()
        else:
            front.copy_(self._buffer[:, :, missing : missing + 1].expand_as(front))

    def _fill_border(self, frames: int) -> None:
        """Replicate the frames' edges into the spatial border (rows, then full-height columns, so
        corners take the corner pixel)."""
        bh, bw = self.border
        region = self._buffer[:, :, : self.history + frames]
        h, w = region.shape[3] - 2 * bh, region.shape[4] - 2 * bw
        if bh:
            inner = region[..., bw : bw + w]
            inner[:, :, :, :bh].copy_(inner[:, :, :, bh : bh + 1].expand_as(inner[:, :, :, :bh]))
            inner[:, :, :, bh + h :].copy_(
                inner[:, :, :, bh + h - 1 : bh + h].expand_as(inner[:, :, :, bh + h :])
            )
        if bw:
            region[..., :bw].copy_(region[..., bw : bw + 1].expand_as(region[..., :bw]))
            region[..., bw + w :].copy_(
                region[..., bw + w - 1 : bw + w].expand_as(region[..., bw + w :])
            )

    def _refresh(self, frames: int) -> None:
        """Keep the last ``history`` frames of [history | chunk] at the front of the buffer.
        Frame by frame in ascending order: source and destination may overlap (a chunk shorter
        than the history), and each source frame lies after its destination."""
        if not self.history:
            return
        keep = min(self.history, self._filled + frames)
        for i in range(keep):
            dst = self.history - keep + i
            src = self.history + frames - keep + i
            self._buffer[:, :, dst].copy_(self._buffer[:, :, src])
        self._filled = keep
