# -*- test-case-name: tests.test_api -*-
"""
The envelope and the parameters of every request (protocol.md 0, 1 and 4.1).

L{parseEnvelope} turns a WebSocket frame into an L{Envelope} or raises
L{EnvelopeError}, which carries the response to send.  L{parseParams} checks a
request's parameters against L{REQUESTS} and returns them with defaults
filled in, or raises L{ProtocolError}(400).  Nothing here knows about
conferences: this module owns the shapes, not the rules.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from ahoyconference.config import Limits
from ahoyconference.interfaces import ProtocolError

MAX_ID_LENGTH = 128
MAX_PASSWORD_LENGTH = 1024
MAX_BITRATE_KBPS = 100_000
MAX_TIME_LIMIT = 31 * 24 * 3600
MAX_MEMBER_LIMIT = 100_000
MAX_MEDIA_ENTRIES = 1000
MAX_INVITATION_LENGTH = 4096


@dataclass(frozen=True)
class Envelope:
    """A parsed message: its type, its transaction and the whole object."""

    messageType: str
    transactionID: str
    body: dict


class EnvelopeError(Exception):
    """
    A frame that cannot be handled as a request; the attributes are the
    response to send.
    """

    def __init__(self, responseType: str, transactionID: str, status: int):
        self.responseType = responseType
        self.transactionID = transactionID
        self.error = ProtocolError(status)
        super().__init__(responseType, transactionID, status)


def responseTypeFor(messageType: str) -> str:
    """C{X_request} → C{X_response}."""
    return messageType[: -len("_request")] + "_response"


def parseEnvelope(payload: bytes, isBinary: bool) -> Envelope:
    """
    Decode one frame.

    @raise EnvelopeError: not text, not JSON, not an object, or the
        C{messageType}/C{transactionID} missing or not strings.
    """
    if isBinary:
        raise EnvelopeError("ERROR_response", "", 400)
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("ERROR_response", "", 400)
    if not isinstance(obj, dict):
        raise EnvelopeError("ERROR_response", "", 400)
    tid = obj.get("transactionID")
    tidOK = isinstance(tid, str)  # any length: the frame cap bounds it
    tidText = tid if tidOK else ""
    mtype = obj.get("messageType")
    if not isinstance(mtype, str) or not mtype or len(mtype) > 100:
        raise EnvelopeError("ERROR_response", tidText, 400)
    if mtype.endswith("_request") and not tidOK:
        raise EnvelopeError(responseTypeFor(mtype), "", 400)
    if not tidOK:
        raise EnvelopeError("ERROR_response", "", 400)
    return Envelope(mtype, tid, obj)


class _Field:
    """One parameter: a type check, a range and whether it is required."""

    def __init__(self, kind: str, required: bool = False, default: Any = None,
                 low: int | None = None, high: int | None = None, maxBytes: str | int | None = None):
        self.kind = kind
        self.required = required
        self.default = default
        self.low = low
        self.high = high
        self.maxBytes = maxBytes

    def check(self, name: str, value: Any, limits: Limits) -> Any:
        if self.kind == "str":
            if not isinstance(value, str):
                raise ProtocolError(400, detail=f"{name} must be a string")
            limit = self.maxBytes
            if isinstance(limit, str):
                limit = getattr(limits, limit)
            if limit is not None and len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
                raise ProtocolError(400, detail=f"{name} is too long")
            if self.low is not None and len(value) < self.low:
                raise ProtocolError(400, detail=f"{name} is empty")
            if not _isUnicode(value):
                raise ProtocolError(400, detail=f"{name} holds a lone surrogate")
            return value
        if self.kind == "bool":
            # protocol.md 4.10: the original client sends flags as 0/1.
            if isinstance(value, bool):
                return value
            if type(value) is int and value in (0, 1):
                return bool(value)
            raise ProtocolError(400, detail=f"{name} must be true or false (or 0/1)")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(400, detail=f"{name} must be an integer")
            if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise ProtocolError(400, detail=f"{name} is out of range")
            return value
        raise AssertionError(self.kind)  # pragma: no cover


_ID = _Field("str", low=1, maxBytes=MAX_ID_LENGTH)
_PASSWORD = _Field("str", default="", maxBytes=MAX_PASSWORD_LENGTH)
_FLAG = _Field("bool", default=False)

REQUESTS: dict[str, dict[str, _Field]] = {
    "CONFERENCE_CREATE_request": {
        "conferenceID": _ID,
        "conferenceName": _Field("str", maxBytes="max_name_bytes"),
        "description": _Field("str", default="", maxBytes="max_description_bytes"),
        "password": _PASSWORD,
        "listenerPassword": _PASSWORD,
        "moderatorPassword": _PASSWORD,
        "maxMember": _Field("int", low=1, high=MAX_MEMBER_LIMIT),
        "maxVideoBitrate": _Field("int", low=1, high=MAX_BITRATE_KBPS),
        "timeLimit": _Field("int", low=1, high=MAX_TIME_LIMIT),
    },
    "CONFERENCE_JOIN_request": {
        # Required unless an invitation names the conference (protocol.md 4.10).
        "conferenceID": _Field("str", low=1, maxBytes=MAX_ID_LENGTH),
        "name": _Field("str", default="", maxBytes="max_name_bytes"),
        "password": _PASSWORD,
        "invitation": _Field("str", low=1, maxBytes=MAX_INVITATION_LENGTH),
    },
    "MEDIA_SHARE_request": {
        "audio": _FLAG,
        "video": _FLAG,
        "maxVideoBitrate": _Field("int", default=500, low=1, high=MAX_BITRATE_KBPS),
        # protocol.md 4.11: the client can send simulcast (the offer asks for it)
        "simulcast": _FLAG,
    },
    "MEDIA_request": {},  # members: checked by _mediaMembers
    "CONFERENCE_LEAVE_request": {},
    "CONFERENCE_KICK_request": {
        "memberID": _Field("str", required=True, low=1, maxBytes=MAX_ID_LENGTH),
    },
    "CHAT_MESSAGE_request": {},  # message: checked by _chatMessage
    "CONFERENCE_DESCRIPTION_request": {
        "description": _Field("str", required=True, maxBytes="max_description_bytes"),
    },
    "CONFERENCE_LOCK_request": {
        # One of the two is required (parseParams).
        "locked": _Field("bool"),
        "lock": _Field("bool"),
    },
    "MEDIA_MUTE_request": {
        "audio": _Field("bool"),
        "video": _Field("bool"),
        "memberID": _Field("str", low=1, maxBytes=MAX_ID_LENGTH),
    },
}

#: Requests that need the client to be in a conference (else 409).
NEEDS_MEMBERSHIP = frozenset(REQUESTS) - {"CONFERENCE_CREATE_request", "CONFERENCE_JOIN_request"}


def _mediaMembers(body: dict, limits: Limits) -> list[dict]:
    members = body.get("members")
    if not isinstance(members, list) or len(members) > MAX_MEDIA_ENTRIES:
        raise ProtocolError(400, detail="members must be a list")
    out = []
    for entry in members:
        if not isinstance(entry, dict):
            raise ProtocolError(400, detail="members entries must be objects")
        out.append({
            "memberID": _ID.check("memberID", entry.get("memberID"), limits),
            "audio": _FLAG.check("audio", _orFalse(entry.get("audio")), limits),
            "video": _FLAG.check("video", _orFalse(entry.get("video")), limits),
            "quality": _quality(entry.get("quality")),
        })
    return out


QUALITIES = ("low", "medium", "high")
"""A C{MEDIA_request} entry's optional C{quality} (protocol.md 4.11)."""


def _quality(value: Any) -> str | None:
    """
    C{quality}: absent or null stays C{None} (C{"high"} for a new
    subscription; protocol.md 4.11); anything but the three names is 400.
    """
    if value is None:
        return None
    if value not in QUALITIES:
        raise ProtocolError(400, detail="quality must be low, medium or high")
    return value


def _orFalse(value: Any) -> Any:
    """C{None} (absent or JSON null) means not set: false."""
    return False if value is None else value


_ESCAPE = re.compile(r"%u([0-9A-Fa-f]{4})|%([0-9A-Fa-f]{2})|%")


def unescapeSdp(sdp: str) -> str:
    """
    Undo JavaScript's C{escape()} on an SDP (protocol.md 4.10): the original
    client sends C{escape(answer.sdp)}.  A plain SDP (it has line breaks) is
    returned as it is.

    Unlike JavaScript's C{unescape()}, which leaves broken sequences alone,
    this refuses them: a C{%} that starts no C{%XX} or C{%uXXXX}, or a lone
    UTF-16 surrogate, is a client bug, not an SDP.

    @raise ProtocolError: 400 for an encoding that does not decode.
    """
    if "\n" in sdp or "%" not in sdp:
        return sdp

    def one(match: re.Match) -> str:
        wide, byte = match.group(1), match.group(2)
        if wide is not None:
            return chr(int(wide, 16))
        if byte is not None:
            return chr(int(byte, 16))
        raise ProtocolError(400, detail="the SDP's %-encoding does not decode")

    text = _ESCAPE.sub(one, sdp)
    try:
        # JavaScript strings are UTF-16: %uD83D%uDE00 is one character.
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise ProtocolError(400, detail="the SDP's %-encoding holds a lone surrogate")


def _chatMessage(body: dict, limits: Limits) -> dict:
    message = body.get("message")
    if not isinstance(message, dict):
        raise ProtocolError(400, detail="message must be an object")
    text = _Field("str", maxBytes="max_chat_bytes").check("text", message.get("text"), limits)
    return {"text": text}


def parseParams(envelope: Envelope, limits: Limits) -> dict:
    """
    Check a request's parameters.

    @return: a dict of every known parameter (absent optional ones at their
        default, which may be C{None}); unknown keys are ignored.
    @raise ProtocolError: 501 for an unknown request, 400 for a bad parameter.
    """
    fields = REQUESTS.get(envelope.messageType)
    if fields is None:
        raise ProtocolError(501)
    body = envelope.body
    params: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in body or (body[name] is None and not spec.required):
            if spec.required:
                raise ProtocolError(400, detail=f"{name} is missing")
            params[name] = spec.default
        else:
            params[name] = spec.check(name, body[name], limits)
    mtype = envelope.messageType
    if mtype == "MEDIA_request":
        params["members"] = _mediaMembers(body, limits)
    elif mtype == "CONFERENCE_LOCK_request":
        # protocol.md 4.3 and 4.10: the original client says lock, we say locked.
        lock = params.pop("lock")
        if params["locked"] is None:
            if lock is None:
                raise ProtocolError(400, detail="locked is missing")
            params["locked"] = lock
    elif mtype == "CONFERENCE_JOIN_request":
        if params["conferenceID"] is None and params["invitation"] is None:
            raise ProtocolError(400, detail="conferenceID is missing")
    elif mtype == "CHAT_MESSAGE_request":
        params["message"] = _chatMessage(body, limits)
    return params


def _isUnicode(text: str) -> bool:
    """
    Is this text encodable as UTF-8?  JSON may spell a lone UTF-16
    surrogate (C{"\\ud800"}); Python decodes it into a C{str} that no
    UTF-8 encoder, log file or WebSocket text frame accepts.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RawJSON(str):
    """
    JSON text already encoded (e.g. a big room's member list, L{encode}
    splices it in as it is instead of encoding the objects again).
    """


#: Stands for a L{RawJSON} value while the rest is encoded; random per
#: process, so no client text can imitate it.
_RAW_MARK = "raw-" + secrets.token_hex(16)


def encode(message: dict) -> bytes:
    """
    One message as the UTF-8 JSON text of a frame.

    A lone surrogate (from a client's C{transactionID} or C{messageType},
    echoed back, protocol.md 4.1) cannot be UTF-8: such a message is sent
    with JSON escapes (C{\\ud800}), which gives the client back exactly
    the string it sent.  Top-level L{RawJSON} values go in as they are.
    """
    raw = {k: v for k, v in message.items() if isinstance(v, RawJSON)}
    if raw:
        message = {k: (f"{_RAW_MARK}-{k}" if k in raw else v) for k, v in message.items()}
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(message, separators=(",", ":")).encode("ascii")
    for k, v in raw.items():
        data = data.replace(f'"{_RAW_MARK}-{k}"'.encode("ascii"), v.encode("utf-8"), 1)
    return data
