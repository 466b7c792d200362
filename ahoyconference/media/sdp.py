# -*- test-case-name: tests.test_sdp -*-
"""
SDP edits and checks for the media engine.

The server makes every offer (protocol.md 3.1, 3.2) with aiortc, so payload
types and header-extension ids are aiortc's on every connection.  What this
module does to the text:

 - L{addBandwidth}: C{b=AS}/C{b=TIAS} in the video section of a publish offer
   (protocol.md 4.5); aiortc's SDP printer drops bandwidth lines, so they are
   added to the text.
 - L{advertiseAddress}: a 1:1 NAT's public address instead of private host
   candidates (C{[ice] public_address}).
 - L{addSimulcast}: the video section of a publish offer asks for simulcast
   (C{a=simulcast:recv}, one C{a=rid:… recv} per layer, the RID and RRID
   header extensions); aiortc's printer knows none of it.
 - L{checkAnswer}: an answer is parsed and compared with our offer before
   anything is applied; an unusable one raises L{ProtocolError}(488).
 - L{usableCandidates}: only remote candidates the server may and can reach
   from its host addresses are kept, and only a few of them.

Over 400 lines on purpose: every place where the server reads or rewrites
SDP text is here, beside the checks that keep a hostile answer out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from aiortc import sdp as aiosdp

from ahoyconference.interfaces import ProtocolError
from ahoyconference.media.hooks import isCodecCompatible, isRtx

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

SIMULCAST_RIDS = ("l", "m", "h")
"""The layers a publish offer asks for, lowest first (docs/architecture.md, "Simulcast")."""

_RID = re.compile(r"[A-Za-z0-9_-]{1,16}")

_SEND_DIRECTIONS = {"publisher": ("sendonly", "sendrecv", "inactive"),
                    "subscriber": ("recvonly", "sendrecv", "inactive")}

MAX_ANSWER_LINES = 2000
"""An answer with more lines is refused (a browser's has one or two hundred)."""

MAX_REMOTE_CANDIDATES = 32
"""Remote candidates kept per m-section; aioice checks every one it is given."""

_FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")


def codecKey(codec) -> tuple:
    """
    What identifies a codec across two negotiations, whatever its payload type.

    @param codec: an C{RTCRtpCodecParameters} (or capability).
    """
    params = codec.parameters or {}
    return (
        codec.mimeType.lower(),
        codec.clockRate,
        str(params.get("packetization-mode", "")),
        str(params.get("profile-level-id", "")).lower(),
    )


def _lines(text: str) -> list[str]:
    return [line for line in re.split(r"\r?\n", text) if line]


def addBandwidth(sdp: str, kind: str, kbps: int) -> str:
    """
    Add C{b=AS:kbps} and C{b=TIAS:bps} to every C{m=kind} section.

    They go after the section's C{c=} line (RFC 4566 order: m, i, c, b, a),
    or straight after the C{m=} line when it has none.  Existing C{b=} lines
    of those sections are replaced.
    """
    out: list[str] = []
    inKind = False
    pending = False
    bandwidth = [f"b=AS:{int(kbps)}", f"b=TIAS:{int(kbps) * 1000}"]
    for line in _lines(sdp):
        if line.startswith("m="):
            if pending:
                out.extend(bandwidth)
            inKind = line.startswith(f"m={kind} ")
            pending = inKind
            out.append(line)
            continue
        if inKind and line.startswith("b="):
            continue
        if pending and not (line.startswith("i=") or line.startswith("c=")):
            out.extend(bandwidth)
            pending = False
        out.append(line)
    if pending:
        out.extend(bandwidth)
    return "\r\n".join(out) + "\r\n"


def addSimulcast(sdp: str, rids: tuple[str, ...] = SIMULCAST_RIDS) -> str:
    """
    Ask for simulcast in every C{m=video} section of a publish offer (RFC
    8853): C{a=simulcast:recv l;m;h}, one C{a=rid:<id> recv} per layer, and
    the C{sdes:mid}, C{rtp-stream-id} and C{repaired-rtp-stream-id} header
    extensions (ids the offer does not use yet).  A browser answering it
    sends one encoding per rid it accepts; one that does not know simulcast
    answers without it and sends one stream, as before.

    @param rids: the layers, lowest first.
    """
    lines = _lines(sdp)
    used = set()
    ids: dict[str, int] = {}
    for line in lines:
        m = re.match(r"a=extmap:(\d+)(?:/\w+)? (\S+)", line)
        if m:
            used.add(int(m.group(1)))
            ids.setdefault(m.group(2), int(m.group(1)))
    free = (i for i in range(1, 15) if i not in used)
    for uri in (MID_URI, RID_URI, RRID_URI):
        if uri not in ids:
            ids[uri] = next(free)
    out: list[str] = []
    inVideo = False
    present: set[str] = set()

    def finish():
        extra = [f"a=extmap:{ids[uri]} {uri}" for uri in (MID_URI, RID_URI, RRID_URI)
                 if uri not in present]
        extra += [f"a=rid:{rid} recv" for rid in rids]
        extra.append("a=simulcast:recv " + ";".join(rids))
        # extmaps before the section's other attributes would be tidier, but
        # order does not matter to parsers; keep them together at the end
        out.extend(extra)

    for line in lines:
        if line.startswith("m="):
            if inVideo:
                finish()
            inVideo = line.startswith("m=video ")
            present = set()
        elif inVideo:
            m = re.match(r"a=extmap:\d+(?:/\w+)? (\S+)", line)
            if m:
                present.add(m.group(1))
            if line.startswith(("a=rid:", "a=simulcast:")):
                continue
        out.append(line)
    if inVideo:
        finish()
    return "\r\n".join(out) + "\r\n"


def simulcastLayers(offer: str, answer: str) -> list[list[str]]:
    """
    The simulcast layers an answer accepted, per m-section, in the order of
    our offer's C{a=simulcast:recv} (lowest first): the rids the answer both
    declares (C{a=rid:<id> send}) and lists in C{a=simulcast:send} (paused
    ones, C{~id}, and alternatives past the first are left out).  An
    m-section without simulcast gives C{[]}.

    @raise ProtocolError: 488 when the answer names a rid we did not offer
        or one that is not well formed.
    """
    def sections(text):
        result = []
        for line in _lines(text):
            if line.startswith("m="):
                result.append([])
            elif result:
                result[-1].append(line)
        return result

    layers = []
    for ours, theirs in zip(sections(offer), sections(answer), strict=False):
        offered = []
        for line in ours:
            if line.startswith("a=simulcast:recv "):
                offered = [r for r in re.split("[;,]", line.split(" ", 1)[1].strip()) if r]
        if not offered:
            layers.append([])
            continue
        declared = set()
        listed: list[str] = []
        for line in theirs:
            if line.startswith("a=rid:"):
                bits = line[6:].split()
                if len(bits) < 2 or bits[1] != "send" or not _RID.fullmatch(bits[0]):
                    _refuse("a=rid line is not a sending rid")
                declared.add(bits[0])
            elif line.startswith("a=simulcast:"):
                bits = line[12:].split()
                if len(bits) != 2 or bits[0] != "send":
                    _refuse("a=simulcast must be send")
                for stream in bits[1].split(";"):
                    first = stream.split(",")[0]
                    if first.startswith("~"):
                        continue
                    if not _RID.fullmatch(first):
                        _refuse("a=simulcast names a malformed rid")
                    listed.append(first)
        for rid in listed + sorted(declared):
            if rid not in offered:
                _refuse(f"the answer's rid {rid[:16]!r} was not offered")
        accepted = set(listed) & declared
        layers.append([rid for rid in offered if rid in accepted])
    return layers


def dropMdnsCandidates(sdp: str) -> str:
    """
    Remove candidates whose address is an mDNS name (C{….local}), as browsers
    send for their host candidates.  Resolving them would mean multicast
    queries from the server; the browser's connectivity checks tell us its
    address anyway (a peer-reflexive candidate, RFC 8445 7.3.1.3).  When a
    candidate was dropped, C{a=end-of-candidates} goes too, so that ICE keeps
    waiting for those checks instead of failing at once for want of pairs
    (the engine's ICE timeout still bounds the wait).
    """
    out = []
    dropped = False
    for line in _lines(sdp):
        if line.startswith("a=candidate:"):
            bits = line.split(" ")
            if len(bits) >= 5 and bits[4].lower().endswith(".local"):
                dropped = True
                continue
        out.append(line)
    if dropped:
        out = [line for line in out if line != "a=end-of-candidates"]
    return "\r\n".join(out) + "\r\n"


def _isPrivate(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_private and not ip.is_loopback and not ip.is_link_local


def advertiseAddress(sdp: str, publicAddress: str | None) -> str:
    """
    Replace private addresses of host candidates (and of C{c=} lines) with
    C{publicAddress}, for a server behind a 1:1 NAT.  Loopback and public
    addresses, and candidates of the other IP version, stay as they are.
    """
    if not publicAddress:
        return sdp
    version = ipaddress.ip_address(publicAddress).version
    family = "IP4" if version == 4 else "IP6"

    def sameVersion(address: str) -> bool:
        try:
            return ipaddress.ip_address(address).version == version
        except ValueError:
            return False

    out = []
    for line in _lines(sdp):
        if line.startswith("a=candidate:"):
            bits = line.split(" ")
            if len(bits) >= 8 and bits[7] == "host" and _isPrivate(bits[4]) \
                    and sameVersion(bits[4]):
                bits[4] = publicAddress
                line = " ".join(bits)
        elif line.startswith("c=IN "):
            bits = line.split(" ")
            if len(bits) == 3 and _isPrivate(bits[2]) and sameVersion(bits[2]):
                line = f"c=IN {family} {publicAddress}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


@dataclass
class NegotiatedMedia:
    """
    What an accepted answer says of one m-section.

    @ivar codecs: payload type -> L{codecKey} of every common codec (not RTX).
    @ivar clockRates: payload type -> clock rate.
    @ivar rtx: payload type of a codec -> payload type of its RTX.
    @ivar extensions: header-extension URI -> id.
    @ivar ssrcs: the SSRCs the answer announced (C{a=ssrc}).
    @ivar rids: the simulcast layers the answer accepted, lowest first
        (L{simulcastLayers}); empty for a single stream.  Only set when the
        RID header extension was negotiated too (else packets could not be
        told apart).
    """

    kind: str
    mid: str
    direction: str
    codecs: dict[int, tuple] = field(default_factory=dict)
    clockRates: dict[int, int] = field(default_factory=dict)
    rtx: dict[int, int] = field(default_factory=dict)
    extensions: dict[str, int] = field(default_factory=dict)
    ssrcs: list[int] = field(default_factory=list)
    rids: list[str] = field(default_factory=list)


def _refuse(detail: str):
    raise ProtocolError(488, detail=detail)


def _wellFormed(fingerprint) -> bool:
    """Is it a known hash's value, as many hex pairs as the hash has bytes?"""
    size = _FINGERPRINT_BYTES.get(str(fingerprint.algorithm).lower())
    value = str(fingerprint.value)
    return (size is not None and len(value) == 3 * size - 1
            and _HEX_PAIRS.fullmatch(value) is not None)


def _reachable(hostAddresses: tuple[str, ...]):
    """
    A test of a remote candidate's address: could our host candidates pair
    with it, and may they send to it?  Loopback only from loopback, other
    unicast only from other addresses (aioice's default, when
    C{hostAddresses} is empty, is every non-loopback interface), the IP
    versions we gather on; never unspecified, multicast, broadcast, link-local
    or reserved addresses, nor names (mDNS or other).
    """
    ours = [ipaddress.ip_address(a) for a in hostAddresses]
    loopback = any(a.is_loopback for a in ours)
    other = not ours or any(not a.is_loopback for a in ours)
    versions = {a.version for a in ours} or {4, 6}

    def reachable(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version not in versions:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip.is_reserved:
            return False
        return loopback if ip.is_loopback else other

    return reachable


def usableCandidates(sdp: str, hostAddresses: tuple[str, ...],
                     limit: int = MAX_REMOTE_CANDIDATES, allowed=None) -> tuple[str, int]:
    """
    Drop the remote candidates of an answer that the server must not use:
    those our host addresses cannot reach or must not send to (see
    L{_reachable}), those outside the allowed remote networks (C{allowed},
    a test of an address, L{ahoyconference.media.ice.RemoteNetworks}), those
    with a bad port, and every one past C{limit} in an m-section.
    Connectivity checks from the client still reveal its real address
    (peer-reflexive), as with browsers' mDNS candidates (so when anything
    was dropped, C{a=end-of-candidates} goes too); they are subject
    to the same networks (L{ahoyconference.media.hooks.guardChecks}).

    @return: the SDP and how many candidates were dropped.
    """
    reachableAddress = _reachable(tuple(hostAddresses))
    if allowed is None:
        reachable = reachableAddress
    else:
        def reachable(address: str) -> bool:
            return reachableAddress(address) and allowed(address)

    out = []
    kept = dropped = 0
    for line in sdp.splitlines():  # as aiortc's parser splits, so nothing slips through
        if line.startswith("m="):
            kept = 0
        elif line.startswith("a=candidate:"):
            bits = line[12:].split()
            if (len(bits) < 8 or kept >= limit or not reachable(bits[4])
                    or not (bits[5].isdigit() and len(bits[5]) <= 5 and 0 < int(bits[5]) < 65536)):
                dropped += 1
                continue
            kept += 1
        out.append(line)
    if dropped:
        # As for mDNS candidates: ICE must keep waiting for the client's own
        # checks (peer-reflexive), not fail at once for want of candidates.
        out = [line for line in out if line != "a=end-of-candidates"]
    return "\r\n".join(out) + "\r\n", dropped


def checkAnswer(offer: str, answer: object, side: str) -> list[NegotiatedMedia]:
    """
    Check an answer against our offer before it is applied.

    @param offer: the SDP we sent.
    @param answer: what the client answered.
    @param side: C{"publisher"} (the client sends) or C{"subscriber"}.
    @return: one L{NegotiatedMedia} per m-section.
    @raise ProtocolError: 488 when the answer is unparsable, does not match the
        offer's sections, lacks ICE or DTLS parameters, rejects a section, or
        has no codec in common with the offer in a section.
    """
    if not isinstance(answer, str) or not answer.strip().startswith("v="):
        _refuse("not an SDP")
    if answer.count("\n") > MAX_ANSWER_LINES or answer.count("\r") > MAX_ANSWER_LINES:
        _refuse("too many lines")
    try:
        parsedOffer = aiosdp.SessionDescription.parse(offer)
        parsed = aiosdp.SessionDescription.parse(answer)
    except Exception as e:  # aiortc's parser raises many kinds (assert, KeyError, ...)
        _refuse(f"unparsable SDP ({e.__class__.__name__})")
    layers = simulcastLayers(offer, answer)
    offered = [(m.kind, m.rtp.muxId) for m in parsedOffer.media]
    answered = [(m.kind, m.rtp.muxId) for m in parsed.media]
    if not answered:
        _refuse("no media section")
    if answered != offered:
        _refuse("media sections do not match the offer")
    result = []
    for ours, theirs in zip(parsedOffer.media, parsed.media, strict=True):
        what = f"{theirs.kind} section"
        if theirs.port == 0:
            _refuse(f"{what} rejected")
        if not theirs.ice or not theirs.ice.usernameFragment or not theirs.ice.password:
            _refuse(f"{what}: no ICE credentials")
        if not theirs.dtls or not any(_wellFormed(f) for f in theirs.dtls.fingerprints):
            _refuse(f"{what}: no DTLS fingerprint")
        if theirs.dtls.role not in ("client", "server"):
            _refuse(f"{what}: DTLS setup must be active or passive")
        if not theirs.rtcp_mux:
            _refuse(f"{what}: no rtcp-mux")
        direction = theirs.direction or "sendrecv"
        if direction not in _SEND_DIRECTIONS[side]:
            _refuse(f"{what}: direction {direction} does not fit the offer")
        media = NegotiatedMedia(kind=theirs.kind, mid=theirs.rtp.muxId, direction=direction)
        base = {}
        for codec in theirs.rtp.codecs:
            if isRtx(codec):
                continue
            mine = next((c for c in ours.rtp.codecs
                         if not isRtx(c) and isCodecCompatible(c, codec)), None)
            if mine is not None:
                media.codecs[codec.payloadType] = codecKey(mine)
                media.clockRates[codec.payloadType] = codec.clockRate
                base[codec.payloadType] = codec
        if not media.codecs:
            _refuse(f"{what}: no codec in common with the offer")
        for codec in theirs.rtp.codecs:
            apt = codec.parameters.get("apt") if isRtx(codec) else None
            if isinstance(apt, int) and apt in base:
                media.rtx[apt] = codec.payloadType
        offeredUris = {e.uri for e in ours.rtp.headerExtensions}
        for ext in theirs.rtp.headerExtensions:
            if ext.uri in offeredUris:
                media.extensions[ext.uri] = ext.id
        media.ssrcs = [s.ssrc for s in theirs.ssrc]
        rids = layers[len(result)] if len(result) < len(layers) else []
        if len(rids) > 1 and RID_URI in media.extensions:
            media.rids = rids
        result.append(media)
    return result
