"""Video files in and out (PyAV), and the padding that fits any clip to CDT's shapes.

CDT wants ``1+4k`` frames whose height and width are multiples of 8. :class:`PaddedClip` presents a
video file as such a tensor, padded by repeating the last frame, row and column, and decodes frames
only when a span of it is read, front to back: an encoder that walks the clip chunk by chunk holds
one chunk of frames at a time, never the whole video. :func:`write_video` consumes frames as they are
produced and renames the finished file into place, so a failure leaves no partial output.

Containers: mp4/mov/mkv (H.264), webm (VP9), gif, avi (MPEG-4 part 2), mpg (MPEG-2 program
stream), and image sequences (a directory or a glob of PNG/JPEG frames) in and out (PNG sequences as
directories); MPEG transport streams (ts/m2ts/mts) and vob are read too. :data:`READ_SUFFIXES` is the
one list of readable containers that every command and dataset uses.

A file's frame count is what decodes: packets the container flags to be discarded (an MP4 edit list
trimming a B-frame stream) are not counted, and an AVI's zero-length "repeat the previous frame"
entries are restored as frames, so a clip keeps its duration (:mod:`.timing`). A truncated file is
recognised from its container's own structure (:mod:`.containers`: AVI chunk sizes and indexes, MP4
box sizes and sample index, the Matroska Segment, MPEG-PS/TS packets, GIF blocks), never from a
frame count, and refused unless the caller accepts it (``allow_truncated``), when the frames that
do decode are used. Frames are read as shown: a display matrix that turns them (a phone's
portrait video) is applied, and the size :func:`probe` reports is the turned frame's.

Modules, one job each: :mod:`.formats` (suffixes read and written), :mod:`.sources` (files,
directories and globs), :mod:`.probing` (:func:`probe`), :mod:`.containers` (each container's
structure checks), :mod:`.read` (decoding), :mod:`.clip` (:class:`PaddedClip`, tensors),
:mod:`.timing` (repeat entries restored, timestamp rates), :mod:`.sizes` (``--size``),
:mod:`.write` (writers, output checks, frame rates, pixel formats), :mod:`.pyav` and
:mod:`.errors` (PyAV and its errors).
"""

from .clip import PaddedClip, frames_to_tensor, tensor_to_frames
from .errors import VideoError
from .formats import (
    DEFAULT_FPS,
    IMAGE_SUFFIXES,
    READ_SUFFIXES,
    VIDEO_SUFFIXES,
    is_video_path,
)
from .probing import VideoInfo, probe
from .read import iter_frames
from .sizes import check_size, parse_size
from .write import (
    PIXEL_FORMATS,
    check_output_path,
    check_writable,
    output_size,
    writable_fps,
    write_video,
)

__all__ = [
    "VideoError",
    "VideoInfo",
    "probe",
    "iter_frames",
    "parse_size",
    "check_size",
    "PaddedClip",
    "frames_to_tensor",
    "tensor_to_frames",
    "write_video",
    "is_video_path",
    "check_output_path",
    "check_writable",
    "output_size",
    "writable_fps",
    "PIXEL_FORMATS",
    "DEFAULT_FPS",
    "VIDEO_SUFFIXES",
    "READ_SUFFIXES",
    "IMAGE_SUFFIXES",
]
