# -*- test-case-name: tests.test_sip_message -*-
"""
SIP messages (RFC 3261 7): parsing one from bytes, framing a TCP stream,
serialising.  Headers keep their order; names are compared case-blind and
compact forms (RFC 3261 7.3.3) are expanded on parsing.
"""

from __future__ import annotations

import re
import secrets

COMPACT = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact",
           "l": "Content-Length", "c": "Content-Type", "k": "Supported", "s": "Subject",
           "x": "Session-Expires", "o": "Event", "e": "Content-Encoding", "r": "Refer-To"}

REASONS = {100: "Trying", 180: "Ringing", 200: "OK", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           415: "Unsupported Media Type", 420: "Bad Extension", 422: "Session Interval Too Small",
           480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
           486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
           491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
           503: "Service Unavailable", 513: "Message Too Large"}

MAX_MESSAGE = 65536
"""Bytes: a larger message is refused (UDP) or ends the connection (TCP)."""

_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3}) ?(.*)$")


class SipParseError(ValueError):
    """Not a SIP message we can read."""


class Message:
    """
    A request or a response.

    @ivar method: the request's method, or C{None} for a response.
    @ivar uri: the request-URI, or C{None}.
    @ivar status: the response's status code, or C{None}.
    @ivar headers: C{[name, value]} pairs in order (names canonical).
    """

    def __init__(self, method=None, uri=None, status=None, reason="", headers=(), body=b""):
        self.method = method
        self.uri = uri
        self.status = status
        self.reason = reason
        self.headers: list[list[str]] = [list(h) for h in headers]
        self.body = body

    @property
    def isRequest(self) -> bool:
        """Is it a request?"""
        return self.method is not None

    def get(self, name: str, default=None):
        """The first value of a header."""
        lower = name.lower()
        for n, v in self.headers:
            if n.lower() == lower:
                return v
        return default

    def getAll(self, name: str) -> list[str]:
        """Every value of a header, splitting comma-joined lists (not for dates)."""
        lower = name.lower()
        out = []
        for n, v in self.headers:
            if n.lower() == lower:
                out.extend(splitList(v))
        return out

    def set(self, name: str, value: str) -> None:
        """Replace every value of a header by one."""
        self.remove(name)
        self.headers.append([name, value])

    def add(self, name: str, value: str, first: bool = False) -> None:
        """Add one value (at the top when C{first}, as for a Via)."""
        if first:
            self.headers.insert(0, [name, value])
        else:
            self.headers.append([name, value])

    def remove(self, name: str) -> None:
        """Drop a header."""
        lower = name.lower()
        self.headers = [h for h in self.headers if h[0].lower() != lower]

    def cseq(self) -> tuple[int, str]:
        """C{(number, method)} of the CSeq header."""
        value = self.get("CSeq", "")
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError(f"bad CSeq {value!r}")
        return int(parts[0]), parts[1].upper()

    def topVia(self) -> dict:
        """The top Via as C{{transport, host, port, params}}."""
        vias = self.getAll("Via")
        if not vias:
            raise SipParseError("no Via")
        return parseVia(vias[0])

    def toBytes(self) -> bytes:
        """Serialise, with a correct Content-Length."""
        first = (f"{self.method} {self.uri} SIP/2.0" if self.isRequest
                 else f"SIP/2.0 {self.status} {self.reason or REASONS.get(self.status, '')}")
        lines = [first]
        for n, v in self.headers:
            if n.lower() != "content-length":
                lines.append(f"{n}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __repr__(self) -> str:
        if self.isRequest:
            return f"<SIP {self.method} {self.uri}>"
        return f"<SIP {self.status} {self.reason}>"


def splitList(value: str) -> list[str]:
    """Split a comma-separated header value, minding quotes and angle brackets."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif ch == "," and not quoted and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    last = value[start:].strip()
    if last:
        out.append(last)
    return out


def canonical(name: str) -> str:
    """A header name in its usual spelling (compact forms expanded)."""
    name = name.strip()
    if len(name) == 1:
        return COMPACT.get(name.lower(), name)
    special = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate"}
    return special.get(name.lower()) or "-".join(p.capitalize() for p in name.split("-"))


def parse(data: bytes) -> Message:
    """
    Parse one whole message (a UDP datagram).

    @raise SipParseError: when it is not one.
    """
    if len(data) > MAX_MESSAGE:
        raise SipParseError("message too large")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise SipParseError("no end of headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SipParseError("headers are not UTF-8") from e
    lines = text.replace("\r\n", "\n").split("\n")
    first = lines[0].strip()
    headers: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded continuation
            headers[-1][1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise SipParseError(f"bad header line {line[:40]!r}")
        headers.append([canonical(name), value.strip()])
    length = None
    for n, v in headers:
        if n == "Content-Length":
            if not v.isdigit():
                raise SipParseError("bad Content-Length")
            length = int(v)
    if length is not None:
        if length > len(body):
            raise SipParseError("body shorter than Content-Length")
        body = body[:length]
    m = _REQUEST_LINE.match(first)
    if m:
        msg = Message(method=m.group(1).upper(), uri=m.group(2), headers=headers, body=body)
    else:
        m = _STATUS_LINE.match(first)
        if not m:
            raise SipParseError(f"bad start line {first[:40]!r}")
        msg = Message(status=int(m.group(1)), reason=m.group(2), headers=headers, body=body)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if msg.get(name) is None:
            raise SipParseError(f"no {name}")
    msg.cseq()
    return msg


class StreamFramer:
    """
    Cuts a TCP byte stream into messages by Content-Length (RFC 3261 18.3).

    @ivar messages: called with each message's bytes.
    """

    def __init__(self, deliver):
        self._deliver = deliver
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """
        More bytes.

        @raise SipParseError: the stream cannot be framed (the caller closes it).
        """
        self._buffer += data
        while True:
            buf = self._buffer.lstrip(b"\r\n")  # keep-alive CRLFs (RFC 5626 3.5.1)
            self._buffer = buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_MESSAGE:
                    raise SipParseError("headers too long")
                return
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", buf[:end])
            if m is None:
                raise SipParseError("no Content-Length on a stream")
            total = end + 4 + int(m.group(1))
            if total > MAX_MESSAGE:
                raise SipParseError("message too large")
            if len(buf) < total:
                return
            self._buffer = buf[total:]
            self._deliver(buf[:total])


def parseVia(value: str) -> dict:
    """A Via value as C{{transport, host, port, params}}."""
    m = re.match(r"^SIP\s*/\s*2\.0\s*/\s*(\w+)\s+([^;\s]+)\s*(.*)$", value.strip(), re.I)
    if not m:
        raise SipParseError(f"bad Via {value[:40]!r}")
    host, port = splitHostPort(m.group(2))
    return {"transport": m.group(1).upper(), "host": host, "port": port,
            "params": parseParams(m.group(3))}


def splitHostPort(text: str) -> tuple[str, int | None]:
    """C{host[:port]}, with IPv6 in brackets."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, colon, port = text.partition(":")
    return host, int(port) if colon and port.isdigit() else None


def parseParams(text: str) -> dict:
    """C{;a=b;c} → C{{'a': 'b', 'c': ''}} (names lower-cased)."""
    out = {}
    for part in text.split(";"):
        part = part.strip()
        if part:
            name, _, value = part.partition("=")
            out[name.strip().lower()] = value.strip().strip('"')
    return out


class NameAddr:
    """A From/To/Contact/Route value: display name, URI, parameters."""

    def __init__(self, display: str, uri: str, params: dict):
        self.display = display
        self.uri = uri
        self.params = params

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Parse C{"Name" <sip:u@h>;tag=x} or C{sip:u@h;tag=x}."""
        value = value.strip()
        m = re.match(r'^(?:"((?:[^"\\]|\\.)*)"|([^<"]*?))\s*<([^>]*)>(.*)$', value)
        if m:
            display = m.group(1) if m.group(1) is not None else (m.group(2) or "").strip()
            return cls(display.replace('\\"', '"'), m.group(3).strip(), parseParams(m.group(4)))
        uri, _, params = value.partition(";")
        if not uri:
            raise SipParseError(f"bad address {value[:40]!r}")
        return cls("", uri.strip(), parseParams(params))

    def __str__(self) -> str:
        params = "".join(f";{k}={v}" if v else f";{k}" for k, v in self.params.items())
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{params}"


class SipUri:
    """The parts of a sip: URI we use: user, host, port, parameters."""

    def __init__(self, user: str, host: str, port: int | None, params: dict, scheme="sip"):
        self.user = user
        self.host = host
        self.port = port
        self.params = params
        self.scheme = scheme

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse C{sip:user@host:port;params} (also sips: and tel-less forms)."""
        m = re.match(r"^(sips?):(?:([^@;]*)@)?([^;?]+)([^?]*)", text.strip(), re.I)
        if not m:
            raise SipParseError(f"bad URI {text[:40]!r}")
        host, port = splitHostPort(m.group(3))
        user = m.group(2) or ""
        return cls(user.split(":")[0], host, port, parseParams(m.group(4)), m.group(1).lower())


def newTag() -> str:
    """A random tag or Call-ID part."""
    return secrets.token_hex(8)


def newBranch() -> str:
    """A Via branch with the RFC 3261 magic cookie."""
    return "z9hG4bK" + secrets.token_hex(10)


def response(request: Message, status: int, reason: str | None = None, toTag: str | None = None,
             body: bytes = b"", extra=()) -> Message:
    """
    A response to C{request} (RFC 3261 8.2.6): Via, From, To (with our tag),
    Call-ID and CSeq copied; Record-Route copied for dialog-making answers.
    """
    headers = [["Via", v] for v in request.getAll("Via")]
    headers.append(["From", request.get("From")])
    to = request.get("To")
    if toTag and "tag=" not in to.lower():
        to = f"{to};tag={toTag}"
    headers.append(["To", to])
    headers.append(["Call-ID", request.get("Call-ID")])
    headers.append(["CSeq", request.get("CSeq")])
    if 100 < status < 300:
        headers.extend(["Record-Route", r] for r in request.getAll("Record-Route"))
    headers.extend([list(h) for h in extra])
    return Message(status=status, reason=reason or REASONS.get(status, ""), headers=headers,
                   body=body)


def stampVia(msg: Message, host: str, port: int) -> None:
    """
    Note where a request really came from in its top Via (RFC 3261 18.2.1:
    C{received} when the sent-by host differs; RFC 3581: the C{rport} value
    when asked for), so that responses copy it.
    """
    for header in msg.headers:
        if header[0] != "Via":
            continue
        values = splitList(header[1])
        via = parseVia(values[0])
        top = values[0]
        if "rport" in via["params"] and not via["params"]["rport"]:
            top = re.sub(r";\s*rport(?=;|$)", f";rport={port}", top, count=1, flags=re.I)
        if via["host"] != host and "received" not in via["params"]:
            top += f";received={host}"
        header[1] = ", ".join([top] + values[1:])
        return
