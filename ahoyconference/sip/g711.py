# -*- test-case-name: tests.test_sip_media -*-
"""
G.711 (ITU-T G.711): μ-law (PCMU) and A-law (PCMA) to and from 16-bit
linear PCM, with tables computed once from the segment definitions.
"""

from __future__ import annotations

from array import array


def _ulawDecode(code: int) -> int:
    code = ~code & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    value = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -value if sign else value


def _alawDecode(code: int) -> int:
    code ^= 0x55
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    if exponent == 0:
        value = (mantissa << 4) + 8
    else:
        value = ((mantissa << 4) + 0x108) << (exponent - 1)
    return value if sign else -value


def _ulawEncode(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, 32635) + 0x84
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _alawEncode(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(-sample - 1 if sample < 0 else sample, 32767) >> 3
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


ULAW_DECODE = array("h", (_ulawDecode(c) for c in range(256)))
ALAW_DECODE = array("h", (_alawDecode(c) for c in range(256)))
# indexed by the sample's 16-bit two's complement
ULAW_ENCODE = bytes(_ulawEncode(s - 65536 if s >= 32768 else s) for s in range(65536))
ALAW_ENCODE = bytes(_alawEncode(s - 65536 if s >= 32768 else s) for s in range(65536))

PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}


def decode(codec: str, payload: bytes) -> array:
    """G.711 bytes → signed 16-bit samples."""
    table = ULAW_DECODE if codec == "PCMU" else ALAW_DECODE
    return array("h", [table[b] for b in payload])


def encode(codec: str, samples) -> bytes:
    """Signed 16-bit samples → G.711 bytes."""
    table = ULAW_ENCODE if codec == "PCMU" else ALAW_ENCODE
    return bytes([table[s & 0xFFFF] for s in samples])


def levelOf(samples) -> int:
    """The RFC 6464 level (-dBov, 0 loudest .. 127 silence) of some samples."""
    import math

    if not samples:
        return 127
    power = sum(s * s for s in samples) / len(samples)
    if power <= 0:
        return 127
    dbov = 10 * math.log10(power / (32768.0 * 32768.0))
    return max(0, min(127, int(round(-dbov))))
