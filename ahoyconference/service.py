# -*- test-case-name: tests.test_api -*-
"""
L{ConferenceService}: the registry of conferences, permanent rooms from the
config, idle reaping, server-wide limits, the policy and the media engine.

Over 400 lines: it is the one object every session, the engine (as its
L{IMediaListener}), the SIP gateway and the cluster directory talk to; the
rules themselves live in conference.py and the per-client work in
session.py.  Its parts (lifecycle and reload, policy calls, create, join
here / by invitation / through the directory, leave and kick, the media
listener) share the registry and its timers; a next split would move the
policy calls (askPolicy and its answer checks) into a module of their own.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable

from twisted.application.service import MultiService
from twisted.internet import defer
from zope.interface import implementer

from ahoyconference.addresses import addressKey
from ahoyconference.conference import KINDS, Conference, Member
from ahoyconference.config import Config
from ahoyconference.interfaces import (
    Action,
    ClientInfo,
    ConferenceSettings,
    IConferenceDirectory,
    IConferencePolicy,
    IInvitationPolicy,
    IMediaEngine,
    IMediaListener,
    ProtocolError,
    Role,
)
from ahoyconference.limits import FailureBackoff
from ahoyconference.logs import logger
from ahoyconference.turn import iceServers

_log = logger(__name__)


@implementer(IMediaListener)
class ConferenceService(MultiService):
    """
    Everything the sessions share.

    @ivar conferences: conferenceID → L{Conference}.
    @ivar members: memberID → L{Member}, across conferences.
    @ivar counters: name → L{Counter} for /metrics (C{refused} by status,
        C{errors} by status, C{joins}, C{created}).
    """

    def __init__(self, config: Config, clock, policy: IConferencePolicy,
                 makeEngine: Callable[[IMediaListener], IMediaEngine],
                 directory: IConferenceDirectory | None = None):
        """
        @param makeEngine: makes the media engine, given what it reports to
            (this service); e.g. C{NoMediaEngine}, or a function making an
            C{AiortcMediaEngine}.  The engine is made last, so it never sees
            a half-made service.
        @param directory: the cluster's directory, or C{None} alone.
        """
        super().__init__()
        self.config = config
        self.directory = directory
        #: The SIP gateway (docs/sip.md) when C{[sip]} is configured, else C{None}.
        self.sip = None
        self.clock = clock
        self.policy = policy
        self.conferences: dict[str, Conference] = {}
        self.members: dict[str, Member] = {}
        self.sessions: set = set()
        self.counters: dict[str, Counter] = {
            "refused": Counter(), "errors": Counter(), "joins": Counter(), "created": Counter(),
            "redirects": Counter(),
            # Hardening (docs/reliability.md): handshakes refused by reason, requests
            # refused by a client's own rate limit, peer-connection caps, backlog events.
            "refused_connections": Counter(), "rate_limited": Counter(),
            "peer_connection_caps": Counter(), "backlog": Counter(),
        }
        self._idle: dict[str, object] = {}
        self._shareTimers: dict[str, object] = {}
        self._creators: dict[str, str] = {}
        self._passwordFailures = FailureBackoff(
            clock, config.limits.password_failures, config.limits.password_backoff)
        if directory is None:
            # In a cluster, permanent rooms are placed by the directory (docs/cluster.md).
            for settings in config.rooms:
                self._addConference(settings)
        self.engine: IMediaEngine = makeEngine(self)

    # -- lifecycle -----------------------------------------------------

    def stopService(self):
        """
        Close every client connection with a close frame (1001), wait for
        them to go (at most C{SHUTDOWN_GRACE} seconds), then close every
        conference and the media engine.
        """
        for session in list(self.sessions):
            session.shutdown()
        d = self._drained(self.SHUTDOWN_GRACE)

        def closeRest(_):
            for session in list(self.sessions):
                session.transport.close(1001, "server shutting down")
            for conference in list(self.conferences.values()):
                self._removeConference(conference, "server stopping")
            for call in list(self._idle.values()) + list(self._shareTimers.values()):
                if call.active():
                    call.cancel()
            self._idle.clear()
            self._shareTimers.clear()
            return defer.maybeDeferred(MultiService.stopService, self)

        d.addCallback(closeRest)
        d.addCallback(lambda _: self.engine.close())
        return d

    SHUTDOWN_GRACE = 3.0

    def _drained(self, grace: float) -> defer.Deferred:
        """A Deferred that fires when no session is left, or after C{grace} seconds."""
        d = defer.Deferred()
        waited = [0.0]

        def check():
            if not self.sessions or waited[0] >= grace:
                d.callback(None)
            else:
                waited[0] += 0.05
                self.clock.callLater(0.05, check)

        check()
        return d

    def reload(self, config: Config) -> None:
        """
        Take a re-read configuration: limits, permanent rooms, Origins,
        privacy and the log level apply at once; ports (and their TLS
        certificates), ICE, the policy and C{[metrics] enabled} need a restart.
        Permanent rooms that disappeared become ordinary rooms (they go when
        idle); new ones are created; existing ones keep their members.
        """
        old = {r.conferenceID for r in self.config.rooms}
        self.config = config
        self._passwordFailures.failures = config.limits.password_failures
        self._passwordFailures.window = config.limits.password_backoff
        for conf in self.conferences.values():
            conf.ipToEveryone = config.ip_to_everyone
        new = {r.conferenceID: r for r in config.rooms}
        for cid in old - set(new):
            conf = self.conferences.get(cid)
            if conf is not None:
                conf.settings = _replaceSettings(conf.settings, permanent=False)
                self._touchIdle(conf)
        for cid, settings in new.items():
            conf = self.conferences.get(cid)
            if conf is None:
                if self.directory is None:
                    self._addConference(settings)
            else:
                conf.settings = settings
                conf.maxMembers = min(settings.maxMember or config.limits.max_members_per_conference,
                                      config.limits.max_members_per_conference)
                self._cancelIdle(cid)
        _log.info("configuration reloaded: {rooms} permanent room(s)", rooms=len(new))

    # -- policy --------------------------------------------------------

    def askPolicy(self, method: str, *args) -> defer.Deferred:
        """
        Call a policy method with a timeout; a result or a L{ProtocolError}
        passes through, anything else becomes 503 and is logged.
        """
        d = defer.maybeDeferred(getattr(self.policy, method), *args)
        d.addTimeout(self.config.limits.policy_timeout, self.clock)
        d.addCallback(_checkPolicyAnswer, method)

        def failed(f):
            if f.check(ProtocolError):
                return f
            if f.check(_BadPolicyAnswer):
                _log.error("policy {policy} gave a bad answer: {error}",
                           policy=self.policy.name, error=str(f.value))
            elif f.check(defer.TimeoutError, defer.CancelledError):
                _log.warn("policy {policy} did not answer {method} in time",
                          policy=self.policy.name, method=method)
            else:
                _log.failure("policy {policy} failed in {method}", f,
                             policy=self.policy.name, method=method)
            raise ProtocolError(503)

        return d.addErrback(failed)

    def checkAllowed(self, member: Member, action: Action) -> defer.Deferred:
        """
        Ask the policy whether the member may do this.

        @return: a Deferred that fires (with C{None}) if it may, and fails
            with L{ProtocolError} 403 if not (503 if the policy fails).
        """
        d = self.askPolicy("mayRequest", member.client, member.role, action,
                           member.conference.settings)

        def check(ok):
            if not ok:
                raise ProtocolError(403)

        return d.addCallback(check)

    # -- conferences ---------------------------------------------------

    def _addConference(self, settings: ConferenceSettings) -> Conference:
        conf = Conference(settings, self.clock, self.config.limits.max_members_per_conference,
                          ipToEveryone=self.config.ip_to_everyone, onTimeUp=self._timeUp)
        self.conferences[settings.conferenceID] = conf
        self.counters["created"]["total"] += 1
        if self.directory is not None:
            self.directory.hosted(settings)
        _log.info("conference {conference_id} created{permanent}",
                  conference_id=settings.conferenceID,
                  permanent=" (permanent)" if settings.permanent else "")
        self._touchIdle(conf)
        return conf

    def createConference(self, client: ClientInfo, params: dict) -> defer.Deferred:
        """
        Create a conference from C{CONFERENCE_CREATE_request} parameters.

        @return: a Deferred firing with the L{ConferenceSettings} it was
            created with (here, or on another node of a cluster); failing with 486
            (the ID exists), 503 (a server-wide limit) or the policy's refusal.
        """
        cid = params["conferenceID"] or secrets.token_hex(16)
        settings = ConferenceSettings(
            conferenceID=cid,
            conferenceName=params["conferenceName"] or cid,
            description=params["description"],
            password=params["password"],
            listenerPassword=params["listenerPassword"],
            moderatorPassword=params["moderatorPassword"],
            maxMember=params["maxMember"],
            maxVideoBitrate=params["maxVideoBitrate"],
            timeLimit=params["timeLimit"],
        )
        self._checkCreate(client, cid)
        d = self.askPolicy("mayCreate", client, settings)

        def create(result):
            final = result if isinstance(result, ConferenceSettings) else settings
            self._checkCreate(client, final.conferenceID)
            if self.directory is None:
                return self._createHere(client, final)
            placed = self.directory.create(final)

            def here(url):
                if url is None:
                    return self._createHere(client, final)
                _log.info("conference {conference_id} created on another node ({url})",
                          conference_id=final.conferenceID, url=url)
                return final

            return placed.addCallback(here)

        return d.addCallback(create)

    def _createHere(self, client: ClientInfo, settings: ConferenceSettings) -> ConferenceSettings:
        self._checkCreate(client, settings.conferenceID)
        self._creators[settings.conferenceID] = addressKey(client.ip)
        self._addConference(settings)
        return settings

    def _checkCreate(self, client: ClientInfo, cid: str) -> None:
        if cid in self.conferences:
            # protocol.md 4.1: the original client reads 486 as "exists, go on and join".
            raise ProtocolError(486, reason="conference exists")
        if len(self.conferences) >= self.config.limits.max_conferences:
            raise ProtocolError(503, detail="too many conferences")
        perClient = self.config.limits.max_conferences_per_client
        key = addressKey(client.ip)  # an IPv6 client counts with its /64
        mine = sum(1 for creator in self._creators.values() if creator == key)
        if perClient and mine >= perClient:
            raise ProtocolError(503, detail="too many conferences from this client")

    def conference(self, cid: str) -> Conference:
        """@raise ProtocolError: 404 for an unknown conference."""
        conf = self.conferences.get(cid)
        if conf is None:
            raise ProtocolError(404)
        return conf

    def _touchIdle(self, conf: Conference) -> None:
        """Start the idle timer of an empty, non-permanent conference."""
        if conf.members or conf.settings.permanent or conf.conferenceID in self._idle:
            return
        self._idle[conf.conferenceID] = self.clock.callLater(
            self.config.limits.idle_timeout, self._idleTimeout, conf)

    def _cancelIdle(self, cid: str) -> None:
        call = self._idle.pop(cid, None)
        if call is not None and call.active():
            call.cancel()

    def _idleTimeout(self, conf: Conference) -> None:
        self._idle.pop(conf.conferenceID, None)
        if not conf.members and self.conferences.get(conf.conferenceID) is conf:
            self._removeConference(conf, "idle")

    def _removeConference(self, conf: Conference, why: str) -> None:
        for member in list(conf.members.values()):
            self.kickMember(member, timeout=why == "time limit")
        self._cancelIdle(conf.conferenceID)
        conf.close()
        if self.conferences.get(conf.conferenceID) is conf:
            del self.conferences[conf.conferenceID]
            self._creators.pop(conf.conferenceID, None)
            if self.directory is not None and why != "server stopping":
                # Stopping, the records stay: members re-create it on another node.
                self.directory.removed(conf.conferenceID, conf.settings.permanent)
            _log.info("conference {conference_id} removed ({why})",
                      conference_id=conf.conferenceID, why=why)

    def _timeUp(self, conf: Conference) -> None:
        _log.info("conference {conference_id} reached its time limit; kicking {count} member(s)",
                  conference_id=conf.conferenceID, count=len(conf.members))
        if conf.settings.permanent:
            for member in list(conf.members.values()):
                self.kickMember(member, timeout=True)
        else:
            self._removeConference(conf, "time limit")

    # -- members -------------------------------------------------------

    def join(self, sink, client: ClientInfo, params: dict) -> defer.Deferred:
        """
        Join a conference.

        @return: a Deferred firing with C{(member, responseFields)}, or failing
            with 404, 403, 470, 486 or 503.
        """
        if params.get("invitation") is not None:
            params = self._invitationJoin(params)
        cid = params["conferenceID"]
        if cid not in self.conferences and self.directory is not None:
            return self.directory.locate(cid).addCallback(self._located, sink, client, params)
        return self._joinHere(sink, client, params)

    def _located(self, found, sink, client: ClientInfo, params: dict) -> defer.Deferred:
        """The directory's answer for a conference this node did not host."""
        url, settings = found
        cid = params["conferenceID"]
        if url is not None:
            self.counters["redirects"]["join"] += 1
            raise ProtocolError(302, detail=f"hosted at {url}", fields={"url": url})
        if cid not in self.conferences:
            if len(self.conferences) >= self.config.limits.max_conferences:
                raise ProtocolError(503, detail="too many conferences")
            self._addConference(settings)
        return self._joinHere(sink, client, params)

    def _joinHere(self, sink, client: ClientInfo, params: dict) -> defer.Deferred:
        cid = params["conferenceID"]
        conf = self.conference(cid)
        self._passwordFailures.check((cid, addressKey(client.ip)))
        d = self.askPolicy("roleFor", client, conf.settings, params["name"], params["password"])

        def badPassword(f):
            f.trap(ProtocolError)
            if f.value.status == 403:
                self._passwordFailures.failed((cid, addressKey(client.ip)))
            return f

        def admit(role: Role):
            role = Role(role)
            current = self.conference(cid)
            current.checkJoin()
            if len(self.members) >= self.config.limits.max_members:
                raise ProtocolError(503, detail="too many members")
            member = Member(params["name"], role, client, sink,
                            webrtc=params.get("webrtc", True))  # False: a phone (docs/sip.md)
            fields = current.add(member)
            # docs/protocol.md 4.11: TURN credentials of this member, if configured.
            servers = iceServers(self.config.ice.turn, member.memberID, self.clock.seconds())
            if servers:
                fields["iceServers"] = servers
            self.members[member.memberID] = member
            self._cancelIdle(cid)
            self.counters["joins"][role.label] += 1
            _log.info("member {member_id} ({name!r}) joined {conference_id} as {role}",
                      member_id=member.memberID[:12], name=member.name, conference_id=cid,
                      role=role.label)
            return member, fields

        d.addErrback(badPassword)
        return d.addCallback(admit)

    def _invitationJoin(self, params: dict) -> dict:
        """
        A join with an C{invitation} (protocol.md 4.10): the policy reads the
        conference (and the name, if the invitation fixes one) from it, and
        the invitation is the password.

        @raise ProtocolError: 400 when the policy knows no invitations, 403
            when it refuses this one or it names another conference.
        """
        if not IInvitationPolicy.providedBy(self.policy):
            raise ProtocolError(400, detail="this server's policy takes no invitations")
        cid, name = self.policy.readInvitation(params["invitation"])
        if params["conferenceID"] not in (None, cid):
            raise ProtocolError(403, detail="the invitation is for another conference")
        return dict(params, conferenceID=cid, password=params["invitation"],
                    name=params["name"] or name or "")

    #: Refusals worth an info line; other error responses are logged at debug
    #: level, so that a client sending garbage cannot flood the log.
    LOGGED_REFUSALS = frozenset({"CONFERENCE_CREATE_request", "CONFERENCE_JOIN_request",
                                 "CONFERENCE_KICK_request", "MEDIA_SHARE_request"})

    def countError(self, request: str, status: int, client: ClientInfo, detail: str = "",
                   quiet: bool = False, rateLimited: bool = False) -> None:
        """
        Count (by status) and log one error response, whatever the request;
        refused joins are also counted on their own.  A 302 to another node
        is logged, not counted: it is not an error.

        @param quiet: log it at debug level only.
        @param rateLimited: refused by the client's own rate limit: counted
            in C{rate_limited} and not logged here (the session logs the
            first refusal of each episode, docs/reliability.md).
        """
        if status == 302:
            _log.info("join for a conference of another node from {ip}: 302{detail}",
                      ip=client.ip, detail=f" ({detail})" if detail else "")
            return
        self.counters["errors"][status] += 1
        if request == "CONFERENCE_JOIN_request":
            self.counters["refused"][status] += 1
        # A client's text: a lone surrogate would break a UTF-8 log file.
        request = request.encode("utf-8", "backslashreplace").decode("utf-8")
        if rateLimited:
            self.counters["rate_limited"][request] += 1
            return
        # 500 is a bug and 503 a server-wide limit: both matter; 501 is client noise.
        loud = not quiet and (request in self.LOGGED_REFUSALS or status in (500, 503))
        log = _log.info if loud else _log.debug
        log("refused {request} from {ip}: {status}{detail}", request=request,
            ip=client.ip, status=status, detail=f" ({detail})" if detail else "")

    def leave(self, member: Member, why: str = "left") -> None:
        """Remove a member from its conference and free its media."""
        conf = member.conference
        self.members.pop(member.memberID, None)
        call = self._shareTimers.pop(member.memberID, None)
        if call is not None and call.active():
            call.cancel()
        self.engine.removeMember(member.memberID)
        if conf is None:
            return
        if any(member.available.values()):
            # protocol.md 4.5: the others learn that its media is gone, from
            # here: the engine tells nothing of a member it removes
            # (IMediaEngine.removeMember).
            for kind in member.available:
                member.available[kind] = False
            member.speaking = False
            member.touch()
            conf.announceMedia(member, exclude=member)
        conf.remove(member)
        for other in conf.members.values():
            self.engine.unsubscribe(other.memberID, member.memberID)
        _log.info("member {member_id} ({name!r}) {why} {conference_id}",
                  member_id=member.memberID[:12], name=member.name, why=why,
                  conference_id=conf.conferenceID)
        self._touchIdle(conf)

    def kickMember(self, member: Member, timeout: bool = False) -> None:
        """Tell the member it was kicked, remove it and close its connection."""
        conf = member.conference
        if conf is None:
            return
        conf.notifyKicked(member, timeout)
        self.leave(member, "timed out of" if timeout else "was kicked from")
        member.sink.disconnect()

    def loadReport(self) -> tuple[dict, list[str]]:
        """This node's load and hosted conferences, for the cluster's heartbeat."""
        stats = {"members": len(self.members), "conferences": len(self.conferences),
                 "forwarded_packets": self.engine.stats().get("forwarded_packets", 0)
                 if self.engine is not None else 0}
        return stats, list(self.conferences)

    # -- IMediaListener --------------------------------------------------

    def shareChanged(self, member: Member, wanted: dict) -> None:
        """The member's C{MEDIA_SHARE_request} took effect (conference.py has the rule)."""
        for kind in member.conference.share(member, wanted):
            self.mediaAvailable(member.memberID, kind, False)

    def mute(self, requester: Member, target: Member, changes: dict) -> None:
        """
        Apply a C{MEDIA_MUTE_request} (the rule: L{Conference.mute}) and stop
        or resume forwarding where a moderator's mute changed.
        """
        for kind, enabled in target.conference.mute(requester, target, changes):
            self.engine.setForwarding(target.memberID, kind, enabled)
            _log.info("member {member_id} {what} {kind} of {target_id}",
                      member_id=requester.memberID[:12], what="unmuted" if enabled else "muted",
                      kind=kind, target_id=target.memberID[:12])

    #: Seconds to wait, when one kind of a share is up, for the other kind
    #: before announcing what is there (protocol.md 4.10: one indication).
    SHARE_GRACE = 3.0

    def mediaAvailable(self, memberID: str, kind: str, available: bool) -> None:
        """
        A member's media of C{kind} started or stopped arriving.  Coming up,
        the C{MEDIA_indication} waits until every kind it shares is up (at
        most L{SHARE_GRACE} seconds), so that clients see one per share.
        """
        member = self.members.get(memberID)
        if member is None or member.conference is None:
            return
        if member.available[kind] == available:
            return
        member.available[kind] = available
        member.touch()
        if kind == "audio" and not available and member.speaking:
            member.conference.setSpeaking(member, False)
        _log.info("media {kind} {state} for member {member_id} in {conference_id}", kind=kind,
                  state="up" if available else "down", member_id=memberID[:12],
                  conference_id=member.conference.conferenceID)
        waiting = [k for k in KINDS if member.sharing[k] and not member.available[k]]
        if available and waiting:
            if memberID not in self._shareTimers:
                self._shareTimers[memberID] = self.clock.callLater(
                    self.SHARE_GRACE, self._announceShare, memberID)
            return
        self._announceShare(memberID)

    def _announceShare(self, memberID: str) -> None:
        call = self._shareTimers.pop(memberID, None)
        if call is not None and call.active():
            call.cancel()
        member = self.members.get(memberID)
        if member is not None and member.conference is not None:
            member.conference.announceMedia(member)

    def speakingChanged(self, memberID: str, speaking: bool) -> None:
        """A member started or stopped speaking: a C{MEDIA_event} (protocol.md 4.10)."""
        member = self.members.get(memberID)
        if member is None or member.conference is None:
            return
        member.conference.setSpeaking(member, speaking)


class _BadPolicyAnswer(Exception):
    """A policy answered something that is not an answer."""


def _checkPolicyAnswer(answer, method: str):
    """
    Check the shape of a policy's answer; a wrong one is a policy failure
    (503), not a bug of ours (500).
    """
    if method == "roleFor":
        if isinstance(answer, bool) or answer not in set(Role):
            raise _BadPolicyAnswer(f"roleFor answered {answer!r}, not a Role")
        return Role(answer)
    if method == "mayRequest":
        if not isinstance(answer, bool):
            raise _BadPolicyAnswer(f"mayRequest answered {answer!r}, not True or False")
        return answer
    if method == "mayCreate":
        if answer is not None and not isinstance(answer, ConferenceSettings):
            raise _BadPolicyAnswer(f"mayCreate answered {answer!r}, not None or settings")
    return answer


def _replaceSettings(settings: ConferenceSettings, **changes) -> ConferenceSettings:
    from dataclasses import replace

    return replace(settings, **changes)
