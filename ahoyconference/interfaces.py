# -*- test-case-name: tests.test_interfaces -*-
"""
The interfaces of AhoyConference and the small value types they use.

Two extension points:

 - L{IConferencePolicy}: who may create a conference, which role a join gets,
   and whether a member may do a given request.  The default is
   L{ahoyconference.policy.PasswordPolicy} (protocol.md 4.2); operators install
   others as Twisted plugins (L{IPolicyPlugin}).
 - L{IMediaEngine}: publishing, subscribing and forwarding media.  The default
   is L{ahoyconference.media.engine.AiortcMediaEngine}.

The media engine reports back through L{IMediaListener}, which the service
implements.  The service makes its engine from a factory it is given
(C{makeEngine(listener) -> IMediaEngine}), passing itself as the listener,
so the engine has what it calls from its construction on and neither needs
to be set on the other afterwards (docs/architecture.md, "Layers").

Over 400 lines on purpose: every interface the parts are written against is
here, so that one file says what a policy, an engine and a directory must do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface


class ProtocolError(Exception):
    """
    A request is refused with an HTTP-like status (protocol.md 4.1).

    Raised by validation, by the conference rules and by policies; turned into
    the response in exactly one place, L{ahoyconference.session.Session}.
    """

    REASONS = {
        302: "moved",
        400: "bad request",
        403: "forbidden",
        404: "not found",
        409: "conflict",
        470: "locked",
        486: "conference full",
        488: "not acceptable here",
        500: "internal error",
        501: "not implemented",
        503: "service unavailable",
    }

    def __init__(self, status: int, reason: str | None = None, detail: str = "",
                 fields: dict | None = None, quiet: bool = False):
        self.status = status
        self.reason = reason if reason is not None else self.REASONS.get(status, "error")
        self.detail = detail
        #: More fields of the response, e.g. the C{url} of a 302 (protocol.md 4.10).
        self.fields = fields or {}
        #: The cause was logged already (once per episode): count, log at debug.
        self.quiet = quiet
        super().__init__(status, self.reason, detail)


class Role(enum.IntEnum):
    """The roles of protocol.md, ranked: a higher value may do more."""

    LISTENER = 1
    SPEAKER = 2
    MODERATOR = 3

    @property
    def label(self) -> str:
        """The lower-case name used in logs and configuration."""
        return self.name.lower()


class Action(enum.StrEnum):
    """What a member may ask to do, as asked of L{IConferencePolicy.mayRequest}."""

    SHARE = "share"
    SUBSCRIBE = "subscribe"
    KICK = "kick"
    LOCK = "lock"
    DESCRIBE = "describe"
    CHAT = "chat"
    MUTE_OTHER = "mute_other"


@dataclass(frozen=True)
class ClientInfo:
    """
    What the server knows of a connected client, for policies and limits.

    @ivar ip: the peer's IP address (never sent to non-moderators unless configured).
    @ivar origin: the HTTP Origin of the WebSocket handshake, or C{None}.
    @ivar headers: the handshake's HTTP headers, lower-cased names.
    """

    ip: str
    origin: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConferenceSettings:
    """
    The parameters a conference is created with (protocol.md 1.1).

    Passwords of C{""} mean "not set".
    """

    #: Shown as set or not by C{repr}/C{str}, never as they are.
    SECRET_FIELDS = ("password", "listenerPassword", "moderatorPassword")

    conferenceID: str
    conferenceName: str
    description: str = ""
    password: str = ""
    listenerPassword: str = ""
    moderatorPassword: str = ""
    maxMember: int | None = None
    maxVideoBitrate: int | None = None
    timeLimit: int | None = None
    permanent: bool = False

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={('<set>' if value else '<none>')}" if name in self.SECRET_FIELDS
            else f"{name}={value!r}"
            for name, value in ((f, getattr(self, f)) for f in self.__dataclass_fields__))
        return f"ConferenceSettings({fields})"

    __str__ = __repr__


class IConferencePolicy(Interface):
    """
    Decides who may create a conference, which role a join gets, and who may
    do what.  Every method may return its result directly or as a
    L{twisted.internet.defer.Deferred} (a policy that asks a web service must
    not block the loop).  To refuse, raise (or fail the Deferred with)
    L{ProtocolError}; any other exception, or no answer within the
    configured policy timeout, refuses the request with 503 and is logged.
    """

    name = Attribute("The policy's name, as given in the config or --policy.")

    def mayCreate(client: ClientInfo, settings: ConferenceSettings):
        """
        May this client create this conference?

        @return: C{None} (or a Deferred firing with C{None}) to allow, or
            the L{ConferenceSettings} to create instead (e.g. with a limit
            forced).  Raise L{ProtocolError} to refuse.
        """

    def roleFor(client: ClientInfo, settings: ConferenceSettings, name: str, password: str):
        """
        Which role does a join with this password get?

        @param settings: the conference's settings (passwords included).
        @param name: the display name the joiner gave.
        @param password: the password given, C{""} when absent.
        @return: a L{Role} (or a Deferred firing with one).  Raise
            L{ProtocolError} (403) to refuse.
        """

    def mayRequest(client: ClientInfo, role: Role, action: Action, settings: ConferenceSettings):
        """
        May a member with this role do this?

        @return: C{True}/C{False} (or a Deferred firing with one).  C{False}
            answers 403.
        """


class IInvitationPolicy(IConferencePolicy):
    """
    A policy that also admits by invitation: a C{CONFERENCE_JOIN_request}
    with C{invitation} and no C{conferenceID} (protocol.md 4.10).  The
    invitation is then passed to C{roleFor} as the password.
    """

    def readInvitation(invitation: str) -> tuple[str, str | None]:
        """
        Which conference does this invitation admit to?

        @return: C{(conferenceID, name)}: C{name} is the display name the
            invitation fixes, or C{None}.
        @raise ProtocolError: 403 for an invitation that is not valid.
        """


class IConferenceDirectory(Interface):
    """
    Where conferences live when several servers (nodes) share the work
    (docs/cluster.md).  The service asks it on every create, and on a join for
    a conference it does not host; without a cluster there is none.
    Every method returns a Deferred; one that fails with L{ProtocolError}
    503 means the directory cannot be reached.
    """

    nodeID = Attribute("This node's ID.")

    def create(settings: ConferenceSettings):
        """
        Record a new conference and choose its node (the least loaded live one).

        @return: a Deferred firing with C{None} when this node hosts it, or
            the URL of the node that does; failing with 486 when the ID exists.
        """

    def locate(conferenceID: str):
        """
        Find the node of a conference this node does not host, placing it on
        a live node if its node died.

        @return: a Deferred firing with C{(None, settings)} when this node
            is to host it (settings as stored: passwords hashed), or
            C{(url, None)} for another node's URL; failing with 404 when no
            such conference exists.
        """

    def hosted(settings: ConferenceSettings):
        """This node hosts this conference now (e.g. a permanent room); C{None}."""

    def removed(conferenceID: str, permanent: bool):
        """This node no longer hosts the conference (it ended); C{None}."""


class IAddressTrustingPolicy(IConferencePolicy):
    """
    A policy that decides by the client's address (as the C{allowlist}
    plugin does).  A web page the user visits connects from the user's
    address, so such a policy needs the Origin check: the server refuses to
    start (or reload) it with C{[server] allowed_origins = ["*"]}.
    """


class IPolicyPlugin(IPlugin):
    """
    A Twisted plugin (in an C{ahoyconference.plugins} package) that makes a
    policy from its C{[policy]} options.

    It extends L{twisted.plugin.IPlugin}: C{getPlugins} only collects module
    attributes that provide C{IPlugin}, so an object declared with
    C{@implementer(IPolicyPlugin)} alone is found.
    """

    name = Attribute("The name operators give in the config or with --policy.")
    description = Attribute("One line for --help and the error listing known policies.")

    def makePolicy(options: dict, reactor):
        """
        @param options: the C{[policy]} table of the config, minus C{name}.
        @param reactor: an L{IReactorTime} provider.
        @return: an L{IConferencePolicy} provider.
        @raise ValueError: the options are wrong (the message names the key).
        """


class IMediaListener(Interface):
    """
    What the media engine tells the rest of the server.  Implemented by
    L{ahoyconference.service.ConferenceService}; every method is called on
    the reactor thread and must not raise.
    """

    def mediaAvailable(memberID: str, kind: str, available: bool):
        """
        Media of C{kind} ("audio" or "video") from this publisher started
        arriving (C{available=True}), or stopped (sharing ended, the peer
        connection failed or closed).
        """

    def speakingChanged(memberID: str, speaking: bool):
        """The publisher's speaking state changed (smoothed, with hysteresis)."""


class IMediaEngine(Interface):
    """
    Publishing, subscribing and forwarding.  Knows nothing of roles or
    conferences: the session has checked everything before it calls.
    Members are named by their C{memberID}.

    Offers and answers are SDP strings.  Methods returning a Deferred fail
    it with L{ProtocolError} to refuse (488 for an unusable SDP, 501 when the
    engine does not do media at all, 503 at a limit).
    """

    def publish(memberID: str, audio: bool, video: bool, maxVideoBitrate: int,
                simulcast: bool = False):
        """
        Start (or renegotiate) receiving this member's media.

        @param maxVideoBitrate: the effective cap in kbit/s (protocol.md 4.5).
        @param simulcast: the client asked for a simulcast offer (protocol.md
            4.11); an engine may ignore it (then the offer is as without).
        @return: a Deferred firing with the server's SDP offer for the
            C{MEDIA_RECEIVE_request}.  Earlier subscriptions to this member
            survive the renegotiation.
        """

    def acceptPublishAnswer(memberID: str, sdp: str):
        """
        The client's answer to the latest publish offer.

        @return: a Deferred firing when it is applied; failing with
            L{ProtocolError}(488) for an unusable SDP, changing nothing.
        """

    def unpublish(memberID: str):
        """
        Stop receiving this member's media (sharing stopped).  Subscriptions
        to it stay, idle, until the member shares again or they end.
        """

    def subscribe(subscriberID: str, publisherID: str, audio: bool, video: bool,
                  quality: str = "high"):
        """
        Start (or replace) forwarding this publisher's media to this subscriber.
        C{quality} (C{"low"}, C{"medium"}, C{"high"}; protocol.md 4.11) is
        the highest simulcast layer the subscriber wants.

        @return: a Deferred firing with the SDP offer for the C{SDP_request}.
        """

    def setQuality(subscriberID: str, publisherID: str, quality: str) -> bool:
        """
        Change the highest simulcast layer of a connected subscription in
        place, without a new offer (protocol.md 4.11).

        @return: C{False} when there is no such subscription with video
            flowing (the caller makes a new offer instead).
        """

    def acceptSubscribeAnswer(subscriberID: str, publisherID: str, sdp: str):
        """
        The subscriber's answer to the latest subscribe offer for this
        publisher.  Fails with L{ProtocolError}(488) for an unusable SDP.
        """

    def unsubscribe(subscriberID: str, publisherID: str):
        """End one subscription (nothing happens if there is none)."""

    def setForwarding(publisherID: str, kind: str, enabled: bool):
        """Stop (or resume) forwarding this publisher's C{kind} to everyone."""

    def isPublishing(publisherID: str, kind: str) -> bool:
        """Is this member sharing C{kind} (offered, even if no packet arrived yet)?"""

    def removeMember(memberID: str):
        """
        The member left: close its publishing peer connection, every
        subscription it has and every subscription to it.  The listener is
        told nothing of this member from here on, not even that its media
        stopped: the caller announces that itself.
        """

    def peerConnections(memberID: str | None = None) -> int:
        """
        How many peer connections are open: on the whole server, or (with
        C{memberID}) those of this member, publishing and subscribing.  The
        session checks the C{[limits]} caps with it before it asks for more.
        """

    def stats() -> dict:
        """
        Counters for /metrics: C{publishers}, C{subscriptions},
        C{forwarded_packets} (copies actually sent), C{forwarded_bytes},
        C{dropped_packets}, and C{peer_connections} (a dict of state name to
        count); optionally C{drops} (reason → count), C{send_errors},
        C{media_errors} (where → count) and the packet path's counters that
        L{ahoyconference.metrics} exports (NACKs, retransmissions, PLIs,
        REMBs, candidates and checks refused).
        """

    def close():
        """Close everything.  @return: a Deferred that fires when done."""


class IPlainMediaEngine(Interface):
    """
    A media engine that also takes members without WebRTC: telephones
    (docs/sip.md).  Their audio is plain RTP handed in by the SIP gateway,
    and what they hear is made from the other members' packets.
    """

    def publishPlain(memberID: str, codecs: dict, clockRates: dict):
        """
        The member publishes audio that the caller hands in as decrypted
        RTP; subscriptions to it offer its codecs (G.711: no transcoding).

        @param codecs: payload type → codec key (C{(mime, rate, "", "")}).
        @param clockRates: payload type → clock rate.
        @return: C{(packet, level)}: call C{packet(data)} per RTP packet and
            C{level(now, dBov)} with its audio level (0 loudest .. 127).
        """

    def tapAudio(listenerID: str, publisherID: str, deliver):
        """
        Hand the publisher's audio packets (unencrypted) to
        C{deliver(publisherID, packet, levelExtensionId)} until
        L{untapAudio} or until either member is removed.
        """

    def untapAudio(listenerID: str, publisherID: str):
        """End a tap (nothing happens if there is none)."""
