"""Video files and streams through a CDT: the pipelines the command line, the latent generator and
scripts share.

One module per job: ``clips`` (a video source opened as a lazily read, padded clip), ``encode``
(a clip to its latent, chunk by chunk, and the metadata a latent file keeps), ``decode`` (a latent
to uint8 frames, chunk by chunk) and ``reconstruct`` (PSNR/SSIM of decoded frames against their
source, read in step with them). Memory stays flat in a video's length throughout: frames are
read, encoded, decoded and handed on one chunk at a time.
"""

from .clips import open_clip
from .decode import decode_chunk_frames, decode_frames
from .encode import MAX_CPU_CHUNK_FRAMES, encode_chunk_frames, encode_clip, video_metadata
from .reconstruct import ReconstructionScores, frame_scores

__all__ = [
    "MAX_CPU_CHUNK_FRAMES",
    "ReconstructionScores",
    "decode_chunk_frames",
    "decode_frames",
    "encode_chunk_frames",
    "encode_clip",
    "frame_scores",
    "open_clip",
    "video_metadata",
]
