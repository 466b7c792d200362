# -*- test-case-name: tests.test_plugins -*-
"""
Signed invitation tokens for the C{token} policy
(L{ahoyconference.plugins.token_policy}).

A token is a JSON Web Token (RFC 7519) in compact form, signed with
HMAC-SHA256 (C{"alg": "HS256"}), made and checked here with the standard
library only.  Its claims:

 - C{conference}: the conference ID it admits to (a string);
 - C{role}: C{"listener"}, C{"speaker"} or C{"moderator"};
 - C{exp}: when it expires, in seconds since the epoch (a number, required);
 - C{name} (optional): the only display name it may join with.

Any JWT library can mint them too (e.g. PHP's firebase/php-jwt, Node's
jsonwebtoken, Python's PyJWT: C{jwt.encode(claims, secret, "HS256")}), so a
website hands out invite links without our code.  From a shell::

    python -m ahoyconference.tokens mint --secret-file /etc/ahoyconference/token.secret \\
        --conference standup --role speaker --ttl 3600 [--name Alice]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import sys
import time
from dataclasses import dataclass

from ahoyconference.interfaces import Role

#: The shortest secret accepted, in bytes (RFC 7518 3.2: at least the hash size).
MIN_SECRET_BYTES = 32

#: Tokens longer than this are refused unread (the protocol's password limit).
MAX_TOKEN_LENGTH = 1024

_HEADER = {"alg": "HS256", "typ": "JWT"}
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_ROLES = {role.label: role for role in Role}


class InvalidToken(ValueError):
    """
    The token is refused.  The message says why (for the log); it never
    contains the token or the secret.
    """


@dataclass(frozen=True)
class Invite:
    """
    What a valid token grants.

    @ivar conferenceID: the conference it admits to.
    @ivar role: the L{Role} it grants.
    @ivar expires: seconds since the epoch after which it is refused.
    @ivar name: the only display name it may join with, or C{None} for any.
    """

    conferenceID: str
    role: Role
    expires: float
    name: str | None = None


def secretBytes(secret: str | bytes) -> bytes:
    """
    The key for a secret given as text (UTF-8) or bytes.

    @raise ValueError: it is shorter than L{MIN_SECRET_BYTES}.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes long "
                         f"(try: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    if not _SEGMENT.match(segment):
        raise InvalidToken("not a token (bad base64url)")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("not a token (bad base64url)")
    if _b64encode(data) != segment:  # one token, one spelling
        raise InvalidToken("not a token (non-canonical base64url)")
    return data


def _sign(key: bytes, signingInput: bytes) -> bytes:
    return hmac.new(key, signingInput, hashlib.sha256).digest()


def _json(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mint(secret: str | bytes, conferenceID: str, role: Role | str, expires: float,
         name: str | None = None) -> str:
    """
    Make a token.

    @param role: a L{Role} or its label (C{"speaker"}).
    @param expires: seconds since the epoch (e.g. C{time.time() + 3600}).
    @raise ValueError: a short secret, an unknown role, an empty conference
        ID, or a token too long for the protocol's password field.
    """
    key = secretBytes(secret)
    if not isinstance(role, Role):
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(_ROLES)})")
        role = _ROLES[role]
    if not conferenceID:
        raise ValueError("the conference ID must not be empty")
    claims = {"conference": conferenceID, "role": role.label, "exp": int(expires)}
    if name is not None:
        claims["name"] = name
    signingInput = _b64encode(_json(_HEADER)) + "." + _b64encode(_json(claims))
    token = signingInput + "." + _b64encode(_sign(key, signingInput.encode("ascii")))
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"the token would be {len(token)} characters; at most "
                         f"{MAX_TOKEN_LENGTH} fit into a password field")
    return token


def decode(key: bytes, token: str) -> dict:
    """
    Check an HS256 JWT's signature and return its claims, unchecked.

    @raise InvalidToken: malformed, another algorithm, or a wrong signature.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("not a token")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a token")
    headerPart, payloadPart, signaturePart = parts
    signature = _b64decode(signaturePart)
    expected = _sign(key, (headerPart + "." + payloadPart).encode("ascii"))
    if not hmac.compare_digest(signature, expected):
        raise InvalidToken("bad signature")
    try:
        header = json.loads(_b64decode(headerPart))
        claims = json.loads(_b64decode(payloadPart))
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("not a token (bad JSON)")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidToken("not an HS256 token")
    if "crit" in header:
        raise InvalidToken("unsupported critical header")
    if not isinstance(claims, dict):
        raise InvalidToken("not a token (claims are not an object)")
    return claims


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def verify(secret: str | bytes, token: str, now: float) -> Invite:
    """
    Check a token completely: signature, expiry and claims.

    @param now: the current time, seconds since the epoch.
    @raise InvalidToken: with the reason.
    """
    claims = decode(secretBytes(secret), token)
    expires = claims.get("exp")
    if not _number(expires):
        raise InvalidToken("no expiry (exp)")
    if now >= expires:
        raise InvalidToken("expired")
    notBefore = claims.get("nbf")
    if notBefore is not None and (not _number(notBefore) or now < notBefore):
        raise InvalidToken("not valid yet (nbf)")
    conferenceID = claims.get("conference")
    if not isinstance(conferenceID, str) or not conferenceID:
        raise InvalidToken("no conference")
    role = _ROLES.get(claims.get("role"))
    if role is None:
        raise InvalidToken("no valid role")
    name = claims.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidToken("name is not a string")
    return Invite(conferenceID, role, expires, name)


def _readSecret(args) -> str:
    if args.secret_file:
        with open(args.secret_file, encoding="utf-8") as f:
            return f.read().strip()
    return args.secret


def main(argv: list[str] | None = None, now: float | None = None) -> int:
    """
    The command line: C{mint} prints a new token, C{verify} prints a token's
    grant (or why it is refused, with exit status 1).
    """
    parser = argparse.ArgumentParser(prog="python -m ahoyconference.tokens",
                                     description="Invitation tokens for the 'token' policy.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("mint", "verify"):
        sub = commands.add_parser(command)
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--secret", help="the [policy] secret (visible in ps; prefer a file)")
        source.add_argument("--secret-file", help="a file holding the secret")
        if command == "mint":
            sub.add_argument("--conference", required=True, help="the conference ID")
            sub.add_argument("--role", required=True, choices=list(_ROLES))
            sub.add_argument("--ttl", type=int, default=3600,
                             help="seconds until it expires (default 3600)")
            sub.add_argument("--name", default=None, help="the only display name it admits")
        else:
            sub.add_argument("token")
    args = parser.parse_args(argv)
    now = time.time() if now is None else now
    try:
        secret = _readSecret(args)
        if args.command == "mint":
            if args.ttl < 1:
                raise ValueError("--ttl must be at least 1")
            print(mint(secret, args.conference, args.role, now + args.ttl, args.name))
        else:
            invite = verify(secret, args.token, now)
            print(f"conference={invite.conferenceID} role={invite.role.label} "
                  f"expires_in={int(invite.expires - now)}s name={invite.name or '(any)'}")
    except (OSError, ValueError) as e:  # InvalidToken is a ValueError
        print(f"{parser.prog} {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
