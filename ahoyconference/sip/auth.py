# -*- test-case-name: tests.test_sip_message -*-
"""
SIP digest authentication of callers (RFC 3261 22, RFC 2617/7616 with MD5,
which every SIP phone has): optional, for a trunk or PBX that is not on a
trusted network of its own (docs/sip.md).  Nonces are stateless: a time
stamp and its HMAC under a secret made at start, valid for L{NONCE_LIFETIME}.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

NONCE_LIFETIME = 300.0
"""Seconds a nonce is taken (an older one gets a new challenge with stale=true)."""

REALM = "ahoyconference"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # noqa: S324 (SIP digest is MD5)


def parseAuthorization(value: str) -> dict:
    """C{Digest a="b", c=d} → C{{'a': 'b', 'c': 'd'}} (names lower-cased)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', rest)}


class DigestAuth:
    """
    Checks the C{Authorization} of requests against one user name and password.

    @param clock: has C{seconds()}.
    """

    def __init__(self, username: str, password: str, clock, realm: str = REALM):
        self.username = username
        self.realm = realm
        self._ha1 = _md5(f"{username}:{realm}:{password}")
        self._clock = clock
        self._secret = secrets.token_bytes(32)

    def _nonce(self, when: float) -> str:
        stamp = f"{int(when):x}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{stamp}.{mac}"

    def _nonceAge(self, nonce: str) -> float | None:
        stamp, _, mac = nonce.partition(".")
        try:
            when = int(stamp, 16)
        except ValueError:
            return None
        expected = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, expected):
            return None
        return self._clock.seconds() - when

    def challenge(self, stale: bool = False) -> str:
        """A C{WWW-Authenticate} value."""
        value = (f'Digest realm="{self.realm}", nonce="{self._nonce(self._clock.seconds())}", '
                 f'algorithm=MD5, qop="auth"')
        return value + (", stale=true" if stale else "")

    def check(self, method: str, header: str | None) -> str:
        """
        @return: C{"ok"}, C{"missing"} (challenge), C{"stale"} (challenge
            again with stale=true) or C{"wrong"} (refuse with 403).
        """
        if not header:
            return "missing"
        fields = parseAuthorization(header)
        needed = ("username", "realm", "nonce", "uri", "response")
        if any(k not in fields for k in needed) or fields.get("algorithm", "MD5").upper() != "MD5":
            return "wrong"
        if fields["username"] != self.username or fields["realm"] != self.realm:
            return "wrong"
        age = self._nonceAge(fields["nonce"])
        if age is None or age < -5:
            return "wrong"
        ha2 = _md5(f"{method}:{fields['uri']}")
        qop = fields.get("qop")
        if qop == "auth":
            if "nc" not in fields or "cnonce" not in fields:
                return "wrong"
            expected = _md5(f"{self._ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}"
                            f":auth:{ha2}")
        elif qop is None:
            expected = _md5(f"{self._ha1}:{fields['nonce']}:{ha2}")
        else:
            return "wrong"
        if not hmac.compare_digest(expected, fields["response"].lower()):
            return "wrong"
        if age > NONCE_LIFETIME:
            return "stale"
        return "ok"
