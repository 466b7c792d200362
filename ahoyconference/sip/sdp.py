# -*- test-case-name: tests.test_sip_media -*-
"""
SDP offer/answer for a phone's plain RTP audio (RFC 3264, RFC 4566): read
the offer's address, port, codecs, telephone-event payload type and
direction; answer with one codec we take (PCMU or PCMA) and RFC 4733 digits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

#: What we take (the first of these in the offer's order): G.711, or Opus
#: when the phone puts it first (forwarded to browsers as it is).
CODECS = ("PCMU", "PCMA", "OPUS")
_RATES = {"PCMU": 8000, "PCMA": 8000, "OPUS": 48000}
_STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000)}
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
                     "inactive": "inactive"}


class SdpError(ValueError):
    """An offer we cannot answer (488)."""


@dataclass
class Offer:
    """What we read of an offer."""

    address: str
    port: int
    codec: str  # the codec we chose
    pt: int
    dtmfPT: int | None
    direction: str
    ptime: int = 20

    @property
    def hold(self) -> bool:
        """Does the offer put us on hold (RFC 3264 8.4)?"""
        return self.direction in ("sendonly", "inactive") or self.address == "0.0.0.0"


def parseOffer(text: str, prefer: str | None = None) -> Offer:
    """
    The first audio stream of an offer and the codec we pick from it: the
    first we take in the offer's order, or C{prefer} when offered (a
    re-INVITE keeps the call's codec).

    @raise SdpError: no audio, no codec we take, or no usable address.
    """
    session = {"c": None, "direction": "sendrecv"}
    media = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            if media is not None:
                break  # only the first audio stream counts
            parts = value.split()
            if len(parts) < 4 or parts[0] != "audio":
                continue
            if not parts[1].split("/")[0].isdigit() or not parts[2].startswith("RTP/"):
                raise SdpError(f"unusable m= line {value[:40]!r}")
            media = {"port": int(parts[1].split("/")[0]), "pts": parts[3:], "rtpmap": {},
                     "c": None, "direction": None, "ptime": 20}
        elif kind == "c":
            parts = value.split()
            if len(parts) >= 3 and parts[0] == "IN":
                address = parts[2].split("/")[0]
                if media is None:
                    session["c"] = address
                else:
                    media["c"] = address
        elif kind == "a":
            name, _, rest = value.partition(":")
            if name in _ANSWER_DIRECTION:
                if media is None:
                    session["direction"] = name
                else:
                    media["direction"] = name
            elif media is not None and name == "rtpmap":
                pt, _, encoding = rest.partition(" ")
                enc = encoding.split("/")
                if pt.isdigit() and len(enc) >= 2 and enc[1].isdigit():
                    media["rtpmap"][int(pt)] = (enc[0].upper(), int(enc[1]))
            elif media is not None and name == "ptime" and rest.strip().isdigit():
                media["ptime"] = int(rest.strip())
    if media is None:
        raise SdpError("no audio stream")
    address = media["c"] or session["c"]
    if not address:
        raise SdpError("no connection address")
    codec = pt = dtmf = None
    for p in media["pts"]:
        if not p.isdigit():
            continue
        n = int(p)
        name, rate = media["rtpmap"].get(n) or _STATIC.get(n, ("", 0))
        if name == "TELEPHONE-EVENT" and rate == 8000 and dtmf is None:
            dtmf = n
        elif name in CODECS and rate == _RATES[name]:
            if codec is None or (name == prefer and codec != prefer):
                codec, pt = name, n
    if codec is None:
        raise SdpError("no codec we take (PCMU, PCMA, Opus)")
    return Offer(address, media["port"], codec, pt, dtmf,
                 media["direction"] or session["direction"], media["ptime"])


def makeAnswer(offer: Offer, address: str, port: int, sessionID: int, version: int) -> str:
    """Our answer: one codec, telephone-events if offered, the matching direction."""
    pts = [str(offer.pt)] + ([str(offer.dtmfPT)] if offer.dtmfPT is not None else [])
    lines = [
        "v=0",
        f"o=ahoyconference {sessionID} {version} IN IP4 {address}",
        "s=ahoyconference",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(pts)}",
        (f"a=rtpmap:{offer.pt} opus/48000/2" if offer.codec == "OPUS"
         else f"a=rtpmap:{offer.pt} {offer.codec}/8000"),
    ]
    if offer.codec == "OPUS":
        lines.append(f"a=fmtp:{offer.pt} useinbandfec=1")
    if offer.dtmfPT is not None:
        lines += [f"a=rtpmap:{offer.dtmfPT} telephone-event/8000", f"a=fmtp:{offer.dtmfPT} 0-15"]
    lines += ["a=ptime:20", "a=" + ("inactive" if offer.address == "0.0.0.0"
                                   else _ANSWER_DIRECTION[offer.direction])]
    return "\r\n".join(lines) + "\r\n"


def newSessionID() -> int:
    """An o= session id (NTP-ish seconds, RFC 4566 5.2)."""
    return int(time.time()) + 2208988800
