# -*- test-case-name: tests.test_plugins -*-
"""
The C{token} policy: the join password is a signed invitation token
(L{ahoyconference.tokens}) naming the conference, the role, the expiry and
optionally the display name, so a website hands out invite links.

Configuration::

    [policy]
    name = "token"
    secret = "at least 32 bytes, e.g. from secrets.token_urlsafe(32)"
    # or: secret_file = "/etc/ahoyconference/token.secret"
    create = "token"    # who may create conferences: "token" (default),
                        # "anyone" or "nobody" (only the [[rooms]] of the config)

With C{create = "token"}, a C{CONFERENCE_CREATE_request} must carry a
moderator token for its C{conferenceID} in C{moderatorPassword} (the browser
client then joins with that same token).  Passwords given at creation are
dropped: under this policy only tokens admit.
"""

from __future__ import annotations

from dataclasses import replace

from zope.interface import implementer

from ahoyconference.interfaces import (
    Action,
    ClientInfo,
    ConferenceSettings,
    IInvitationPolicy,
    IPolicyPlugin,
    ProtocolError,
    Role,
)
from ahoyconference.policy import roleAllows
from ahoyconference.tokens import InvalidToken, Invite, secretBytes, verify

#: The values of C{[policy] create}: who may create conferences.
CREATE_MODES = ("token", "anyone", "nobody")


@implementer(IInvitationPolicy)
class TokenPolicy:
    """
    Roles from signed tokens; L{MINIMUM_ROLE} says who may do what.

    @param secret: the HMAC key (at least 32 bytes).
    @param clock: an C{IReactorTime}; its C{seconds()} decide expiry.
    @param create: who may create conferences, one of L{CREATE_MODES}.
    """

    name = "token"

    def __init__(self, secret: str | bytes, clock, create: str = "token"):
        if create not in CREATE_MODES:
            raise ValueError(f"create must be one of {', '.join(CREATE_MODES)}, not {create!r}")
        self._key = secretBytes(secret)
        self.clock = clock
        self.create = create

    def _verify(self, token: str) -> Invite:
        try:
            return verify(self._key, token, self.clock.seconds())
        except InvalidToken as e:
            raise ProtocolError(403, detail=f"token refused: {e}")

    def _invite(self, token: str, conferenceID: str) -> Invite:
        invite = self._verify(token)
        if invite.conferenceID != conferenceID:
            raise ProtocolError(403, detail="token refused: for another conference")
        return invite

    def mayCreate(self, client: ClientInfo, settings: ConferenceSettings):
        """
        As configured by C{create}; the conference keeps no passwords.
        """
        if self.create == "nobody":
            raise ProtocolError(403, detail="this server creates no conferences on request")
        if self.create == "token":
            invite = self._invite(settings.moderatorPassword, settings.conferenceID)
            if invite.role is not Role.MODERATOR:
                raise ProtocolError(403, detail="token refused: creating needs a moderator token")
        return replace(settings, password="", listenerPassword="", moderatorPassword="")

    def roleFor(self, client: ClientInfo, settings: ConferenceSettings, name: str, password: str):
        """The token's role, if it is valid for this conference (and this name)."""
        invite = self._invite(password, settings.conferenceID)
        if invite.name is not None and invite.name != name:
            raise ProtocolError(403, detail="token refused: for another name")
        return invite.role

    def readInvitation(self, invitation: str) -> tuple[str, str | None]:
        """An invitation is a token: its conference and its name (protocol.md 4.10)."""
        invite = self._verify(invitation)
        return invite.conferenceID, invite.name

    def mayRequest(self, client: ClientInfo, role: Role, action: Action, settings):
        """Allowed when the role is at least L{MINIMUM_ROLE} for the action."""
        return roleAllows(role, action)


@implementer(IPolicyPlugin)
class TokenPolicyPlugin:
    """Makes a L{TokenPolicy} from the C{[policy]} table."""

    name = "token"
    description = "Join with a signed invitation token (conference, role, expiry, name)."

    def makePolicy(self, options: dict, reactor) -> TokenPolicy:
        """
        @param options: C{secret} or C{secret_file}, and optionally C{create}.
        @raise ValueError: naming the C{[policy]} key at fault.
        """
        options = dict(options)
        secret = options.pop("secret", None)
        secretFile = options.pop("secret_file", None)
        create = options.pop("create", "token")
        if options:
            raise ValueError(f"[policy] {sorted(options)[0]}: unknown key for the token policy "
                             f"(known: create, secret, secret_file)")
        if (secret is None) == (secretFile is None):
            raise ValueError("[policy] secret: the token policy needs secret or secret_file "
                             "(exactly one)")
        if secretFile is not None:
            if not isinstance(secretFile, str):
                raise ValueError(f"[policy] secret_file: must be a string, not {secretFile!r}")
            try:
                with open(secretFile, encoding="utf-8") as f:
                    secret = f.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"[policy] secret_file: cannot read {secretFile}: {e}")
        key = "secret_file" if secretFile is not None else "secret"
        if not isinstance(secret, str):
            raise ValueError(f"[policy] {key}: must be a string")
        if create not in CREATE_MODES:
            raise ValueError(f"[policy] create: must be one of {', '.join(CREATE_MODES)}, "
                             f"not {create!r}")
        try:
            return TokenPolicy(secret, reactor, create)
        except ValueError as e:
            raise ValueError(f"[policy] {key}: {e}")


tokenPolicyPlugin = TokenPolicyPlugin()
