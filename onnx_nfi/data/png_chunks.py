"""Decode with OpenCV without libpng's warnings on the terminal.

libpng prints warnings such as "libpng warning: iCCP: known incorrect sRGB profile" straight to
the process's stderr from C, in the middle of the progress bars; OpenCV's log level does not
reach them, and redirecting file descriptor 2 around a decode would also swallow other threads'
output. Nearly all of them are about ancillary chunks (colour profiles, text, timestamps) that
OpenCV never uses for the pixels it returns, so a PNG is decoded from its critical chunks only:
the same pixels, no warning. Anything that does not parse as a PNG is decoded as given.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ancillary chunks that change what OpenCV returns (transparency, EXIF orientation): kept
_KEPT_ANCILLARY = frozenset({b"tRNS", b"eXIf"})


def critical_chunks(data: bytes) -> bytes:
    """``data`` without the ancillary chunks of a PNG OpenCV ignores; not a well-formed PNG: as given."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept, pos, dropped = [PNG_SIGNATURE], len(PNG_SIGNATURE), False
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return data  # truncated: the decoder's own verdict, not ours
        kind = data[pos + 4 : pos + 8]
        if kind[0] & 0x20 and kind not in _KEPT_ANCILLARY:  # lower-case first letter: ancillary
            dropped = True
        else:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(kept) if dropped else data


def imdecode(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imdecode`` of ``data`` (a PNG: from its critical chunks, so libpng has nothing to warn about)."""
    return cv2.imdecode(np.frombuffer(critical_chunks(data), np.uint8), flags)
