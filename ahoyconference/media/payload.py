# -*- test-case-name: tests.test_simulcast -*-
"""
Reading what simulcast needs from plain RTP packets (docs/architecture.md,
"Simulcast"): a header extension's value (the RID), where the payload
starts, the VP8 payload descriptor (RFC 7741: picture ID, TL0PICIDX, the
keyframe bit) and H.264 keyframes (RFC 6184).  Pure functions of bytes.
"""

from __future__ import annotations


def readExtension(data, extId: int) -> bytes | None:
    """
    The value of header extension C{extId} (RFC 8285, one-byte or two-byte
    form) of a plain RTP packet, or C{None}.
    """
    if not extId or not data[0] & 0x10:
        return None
    pos = 12 + 4 * (data[0] & 0x0F)
    if len(data) < pos + 4:
        return None
    profile = (data[pos] << 8) | data[pos + 1]
    end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    pos += 4
    if end > len(data):
        return None
    if profile == 0xBEDE:
        while pos < end:
            h = data[pos]
            if h == 0:
                pos += 1
                continue
            eid, length = h >> 4, (h & 0x0F) + 1
            if eid == 15:
                return None
            if eid == extId:
                return bytes(data[pos + 1:min(end, pos + 1 + length)])
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while pos + 1 < end:
            eid = data[pos]
            if eid == 0:
                pos += 1
                continue
            length = data[pos + 1]
            if eid == extId:
                return bytes(data[pos + 2:min(end, pos + 2 + length)])
            pos += 2 + length
    return None


def vp8Fields(data, start: int) -> tuple[int, int, int, bool]:
    """
    The VP8 payload descriptor (RFC 7741 4.2) of a packet whose payload
    starts at C{start}.

    @return: C{(pictureIdOffset, pictureIdBits, tl0Offset, keyframeStart)}:
        the offset of the picture ID (0 when absent) and its width (7 or
        15), the offset of TL0PICIDX (0 when absent), and whether the
        packet starts a keyframe (S set, partition 0, P bit clear).
    """
    size = len(data)
    if start >= size:
        return 0, 0, 0, False
    b = data[start]
    pos = start + 1
    picOffset = picBits = tl0Offset = 0
    if b & 0x80:  # X
        if pos >= size:
            return 0, 0, 0, False
        x = data[pos]
        pos += 1
        if x & 0x80:  # I
            if pos >= size:
                return 0, 0, 0, False
            picOffset = pos
            if data[pos] & 0x80:  # M: 15 bits
                picBits = 15
                pos += 2
            else:
                picBits = 7
                pos += 1
        if x & 0x40:  # L
            tl0Offset = pos
            pos += 1
        if x & 0x30:  # T or K
            pos += 1
    if pos >= size:
        return picOffset, picBits, tl0Offset if tl0Offset < size else 0, False
    keyframe = bool(b & 0x10) and (b & 0x07) == 0 and not data[pos] & 0x01
    return picOffset, picBits, tl0Offset if tl0Offset < size else 0, keyframe


def h264Keyframe(data, start: int) -> bool:
    """
    Does this H.264 packet (RFC 6184) start a keyframe: an IDR slice or an
    SPS, alone, first in a STAP-A, or the start of a fragmented IDR?
    """
    if start >= len(data):
        return False
    nal = data[start] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: size (2 bytes), then the first NAL unit
        return start + 3 < len(data) and (data[start + 3] & 0x1F) in (5, 7)
    if nal == 28:  # FU-A: the start of a fragmented NAL unit
        return start + 1 < len(data) and bool(data[start + 1] & 0x80) \
            and (data[start + 1] & 0x1F) == 5
    return False


def payloadStart(data) -> int:
    """Where an RTP packet's payload starts (after CSRCs and the extension)."""
    b0 = data[0]
    length = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(data) < length + 4:
            return len(data)
        length += 4 + 4 * ((data[length + 2] << 8) | data[length + 3])
    return length


def readPictureId(data, offset: int, bits: int) -> int:
    """The picture ID at C{offset} (L{vp8Fields})."""
    if bits == 15:
        return ((data[offset] & 0x7F) << 8) | data[offset + 1]
    return data[offset] & 0x7F


def writePictureId(buffer, offset: int, bits: int, value: int) -> None:
    """Write a picture ID of the width it had (the M bit stays as it was)."""
    if bits == 15:
        buffer[offset] = 0x80 | ((value >> 8) & 0x7F)
        buffer[offset + 1] = value & 0xFF
    else:
        buffer[offset] = value & 0x7F
