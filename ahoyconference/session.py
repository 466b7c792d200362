# -*- test-case-name: tests.test_api -*-
"""
L{Session}: one connected client.  It turns frames into requests, checks
membership and permissions, calls the conference, the service and the media
engine, and turns every outcome into exactly one response.

This is the one place where L{ProtocolError} becomes a response and where
any other exception becomes a 500 (logged with its traceback; the connection
stays up), protocol.md 4.1.

Over 400 lines: one handler per request of protocol.md 1 (each a few
lines), the request queue and its bounds, the subscription offers and the
client's answers.  They share the per-connection state (membership, queue,
rates, outstanding offers); splitting them by request would spread the one
place where errors become responses over several modules.
"""

from __future__ import annotations

import secrets

from twisted.internet import defer

from ahoyconference.conference import KINDS, Member
from ahoyconference.interfaces import Action, ClientInfo, ProtocolError
from ahoyconference.limits import RateLimited, RateLimiter
from ahoyconference.logs import logger
from ahoyconference.messages import (
    NEEDS_MEMBERSHIP,
    Envelope,
    EnvelopeError,
    encode,
    parseEnvelope,
    parseParams,
    responseTypeFor,
    unescapeSdp,
)

_log = logger(__name__)


class Session:
    """
    One client connection.

    @param transport: has C{sendBytes(data)} (one text frame),
        C{close(code, reason)}, C{pauseReading()} and C{resumeReading()}
        (the session's queue is over, then under, its soft bound) and
        C{overloaded(reason)} (over its hard bound: close with 1008).
    @ivar member: the L{Member} while joined, else C{None}.
    """

    def __init__(self, service, client: ClientInfo, transport):
        self.service = service
        self.client = client
        self.transport = transport
        self.member: Member | None = None
        self._pending: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._offers: dict[str, _Offer] = {}  # publisherID → the subscription offer out
        # publisherID → (audio, video), shareEpoch, quality of the answered subscription
        self._live: dict[str, tuple] = {}
        self._subscribedTo: set[str] = set()  # publisherIDs the engine was asked to subscribe to
        self._lock = defer.DeferredLock()
        limits = service.config.limits
        self._joinRate = RateLimiter(service.clock, limits.join_rate)
        self._chatRate = RateLimiter(service.clock, limits.chat_rate)
        # docs/reliability.md: the requests that fan out (peer connections) or
        # broadcast to the room, limited per connection.  A browser subscribes
        # to each member with its own MEDIA_request: a whole room may come at once.
        self._requestRates = {
            "MEDIA_SHARE_request": RateLimiter(service.clock, limits.share_rate),
            "MEDIA_request": RateLimiter(
                service.clock, limits.media_rate,
                max(limits.media_rate * 2, limits.max_members_per_conference)),
            "MEDIA_MUTE_request": RateLimiter(service.clock, limits.mute_rate),
            "CONFERENCE_DESCRIPTION_request": RateLimiter(service.clock, limits.description_rate),
            "CONFERENCE_LOCK_request": RateLimiter(service.clock, limits.lock_rate),
        }
        self._closed = False
        self._queuedFrames = 0
        self._queuedBytes = 0
        self._readingPaused = False
        service.sessions.add(self)

    # -- the transport's side --------------------------------------------

    def received(self, payload: bytes, isBinary: bool) -> defer.Deferred | None:
        """
        Handle one frame, after the frames before it.  What waits is
        bounded (docs/reliability.md): over half of C{[limits]
        max_queued_requests} or C{max_queued_bytes} the transport stops
        reading; over the whole, the connection is dropped.
        """
        if self._closed:
            self.service.counters["backlog"]["stale_frames"] += 1
            return None
        limits = self.service.config.limits
        size = len(payload)
        frames, queued = self._queuedFrames + 1, self._queuedBytes + size
        if ((limits.max_queued_requests and frames > limits.max_queued_requests)
                or (limits.max_queued_bytes and queued > limits.max_queued_bytes)):
            self._overloaded(frames, queued)
            return None
        self._queuedFrames, self._queuedBytes = frames, queued
        if not self._readingPaused and self._overSoftBound(limits):
            self._readingPaused = True
            self.service.counters["backlog"]["paused"] += 1
            self.transport.pauseReading()
        return self._lock.run(self._dequeued, payload, isBinary, size)

    def _overSoftBound(self, limits) -> bool:
        return bool((limits.max_queued_requests
                     and self._queuedFrames * 2 > limits.max_queued_requests)
                    or (limits.max_queued_bytes and self._queuedBytes * 2 > limits.max_queued_bytes))

    def _overloaded(self, frames: int, queued: int) -> None:
        """Over the hard bound: no queued frame runs, the connection is dropped."""
        self.service.counters["backlog"]["dropped_connections"] += 1
        self.service.counters["backlog"]["stale_frames"] += self._queuedFrames
        _log.info("disconnecting {ip}: {frames} requests ({size} bytes) queued behind a slow "
                  "one, over [limits] max_queued_requests/max_queued_bytes",
                  ip=self.client.ip, frames=frames, size=queued)
        self._closed = True  # the queued frames must not run (connectionLost follows)
        self.transport.overloaded("too many queued requests")

    def _dequeued(self, payload: bytes, isBinary: bool, size: int):
        self._queuedFrames -= 1
        self._queuedBytes -= size
        if self._readingPaused and not self._overSoftBound(self.service.config.limits):
            self._readingPaused = False
            self.transport.resumeReading()
        if self._closed:  # the connection went while this frame waited
            self.service.counters["backlog"]["stale_frames"] += 1
            return None
        return self._handle(payload, isBinary)

    def connectionLost(self) -> None:
        """The WebSocket closed: leave the conference (protocol.md 0)."""
        self._closed = True
        self.service.sessions.discard(self)
        member, self.member = self.member, None
        self._pending.clear()
        self._offers.clear()
        self._live.clear()
        self._subscribedTo.clear()
        if member is not None:
            self.service.leave(member, "disconnected from")

    def shutdown(self) -> None:
        """The server is stopping: close with 1001 (going away)."""
        self.transport.close(1001, "server shutting down")

    # -- MemberSink ----------------------------------------------------

    def sendEncoded(self, data: bytes) -> None:
        """Send one encoded message."""
        if not self._closed:
            self.transport.sendBytes(data)

    def disconnect(self) -> None:
        """Close the connection (kicked); the member is already gone."""
        self.member = None
        self._pending.clear()
        self._offers.clear()
        self._live.clear()
        self._subscribedTo.clear()
        self.transport.close(1000, "kicked")

    def send(self, message: dict) -> None:
        """Encode and send one message."""
        self.sendEncoded(encode(message))

    def _rateLimited(self, what: str) -> None:
        _log.info("{ip} is over the {what} rate; refusing with 503 (logged once until it is "
                  "under the rate again; ahoy_rate_limited counts the refusals)",
                  ip=self.client.ip, what=what)

    def _underRate(self, what: str, refusals: int) -> None:
        _log.debug("{ip} is under the {what} rate again after {count} refusal(s)",
                   ip=self.client.ip, what=what, count=refusals)

    def _checkRate(self, limiter: RateLimiter, what: str) -> None:
        """@raise RateLimited: 503 when this connection is over this rate."""
        limiter.check(lambda: self._rateLimited(what),
                      lambda count: self._underRate(what, count))

    # -- dispatch ------------------------------------------------------

    def _handle(self, payload: bytes, isBinary: bool):
        try:
            envelope = parseEnvelope(payload, isBinary)
        except EnvelopeError as e:
            self._error(e.responseType, e.transactionID, e.error, "(unreadable message)")
            return None
        mtype = envelope.messageType
        if mtype.endswith("_request"):
            return self._request(envelope)
        if mtype.endswith("_response"):
            return self._clientResponse(envelope)
        self._error("ERROR_response", envelope.transactionID, ProtocolError(501), mtype)
        return None

    def _request(self, envelope: Envelope) -> defer.Deferred:
        mtype = envelope.messageType
        rtype = responseTypeFor(mtype)
        tid = envelope.transactionID
        d = defer.maybeDeferred(self._dispatch, envelope)

        def done(result):
            fields, after = result if isinstance(result, tuple) else (result, None)
            response = {"messageType": rtype, "status": 200, "reason": "OK"}
            response.update(fields or {})
            response["transactionID"] = tid
            self.send(response)
            if after is not None:
                # The response is out: a failure from here on is logged, never a second response.
                return defer.maybeDeferred(after).addErrback(
                    lambda f: _log.failure("internal error after {request}", f, request=mtype))

        def failed(f):
            if f.check(ProtocolError):
                self._error(rtype, tid, f.value, mtype)
            else:
                _log.failure("internal error handling {request}", f, request=mtype)
                self._error(rtype, tid, ProtocolError(500), mtype)

        d.addCallbacks(done, failed)
        return d

    def _error(self, rtype: str, tid: str, error: ProtocolError, request: str) -> None:
        self.service.countError(request, error.status, self.client, error.detail,
                                quiet=error.quiet, rateLimited=isinstance(error, RateLimited))
        response = {"messageType": rtype, "status": error.status, "reason": error.reason}
        response.update(error.fields)
        response["transactionID"] = tid
        self.send(response)

    def _dispatch(self, envelope: Envelope):
        params = parseParams(envelope, self.service.config.limits)
        mtype = envelope.messageType
        if mtype in NEEDS_MEMBERSHIP and self.member is None:
            raise ProtocolError(409, detail="not in a conference")
        limiter = self._requestRates.get(mtype)
        if limiter is not None:
            self._checkRate(limiter, mtype)
        name = mtype[: -len("_request")].lower()
        return getattr(self, "request_" + name)(params)

    # -- requests ------------------------------------------------------

    def request_conference_create(self, params):
        """1.1: create a conference."""
        d = self.service.createConference(self.client, params)
        return d.addCallback(lambda settings: {
            "conferenceID": settings.conferenceID,
            "conferenceName": settings.conferenceName,
            "description": settings.description,
        })

    def request_conference_join(self, params):
        """1.2: join a conference."""
        if self.member is not None:
            raise ProtocolError(409, detail="already in a conference")
        self._checkRate(self._joinRate, "join")
        d = self.service.join(self, self.client, params)

        def joined(result):
            member, fields = result
            if self._closed:  # the connection went while the policy thought
                self.service.leave(member, "disconnected from")
                raise ProtocolError(409)
            self.member = member
            return fields

        return d.addCallback(joined)

    def request_conference_leave(self, params):
        """1.5: leave the conference."""
        member, self.member = self.member, None
        self._pending.clear()
        self._offers.clear()
        self._live.clear()
        self._subscribedTo.clear()
        self.service.leave(member)
        return {}

    @defer.inlineCallbacks
    def request_conference_kick(self, params):
        """1.6: a moderator removes a member."""
        member = self.member
        yield self.service.checkAllowed(member, Action.KICK)
        target = member.conference.member(params["memberID"])
        _log.info("member {member_id} kicked {target_id} from {conference_id}",
                  member_id=member.memberID[:12], target_id=target.memberID[:12],
                  conference_id=member.conference.conferenceID)
        return {}, lambda: self.service.kickMember(target)

    @defer.inlineCallbacks
    def request_chat_message(self, params):
        """1.7: chat to everyone else."""
        self._checkRate(self._chatRate, "chat")
        member = self.member
        yield self.service.checkAllowed(member, Action.CHAT)
        if member.conference is not None:
            member.conference.chat(member, params["message"])
        return {}

    @defer.inlineCallbacks
    def request_conference_description(self, params):
        """1.8: a moderator changes the description."""
        member = self.member
        yield self.service.checkAllowed(member, Action.DESCRIBE)
        conf = member.conference
        return {}, lambda: conf.setDescription(params["description"])

    @defer.inlineCallbacks
    def request_conference_lock(self, params):
        """4.3: a moderator locks or unlocks."""
        member = self.member
        yield self.service.checkAllowed(member, Action.LOCK)
        conf = member.conference
        _log.info("conference {conference_id} {what} by member {member_id}",
                  conference_id=conf.conferenceID,
                  what="locked" if params["locked"] else "unlocked",
                  member_id=member.memberID[:12])
        return {}, lambda: conf.setLocked(params["locked"])

    @defer.inlineCallbacks
    def request_media_mute(self, params):
        """4.4: announce one's own mute state, or a moderator mutes another."""
        member = self.member
        conf = member.conference
        changes = {k: params[k] for k in KINDS if params[k] is not None}
        target = member
        if params["memberID"] is not None and params["memberID"] != member.memberID:
            yield self.service.checkAllowed(member, Action.MUTE_OTHER)
            target = conf.member(params["memberID"])
        if target.conference is None:
            raise ProtocolError(404)
        self.service.mute(member, target, changes)
        return {}

    @defer.inlineCallbacks
    def request_media_share(self, params):
        """1.3 and 4.5: share (or stop sharing) microphone and camera."""
        member = self.member
        yield self.service.checkAllowed(member, Action.SHARE)
        conf = member.conference
        engine = self.service.engine
        wanted = {"audio": params["audio"], "video": params["video"]}
        cap = conf.videoCap(params["maxVideoBitrate"])
        if not any(wanted.values()):
            engine.unpublish(member.memberID)
            self._dropPending("MEDIA_RECEIVE_response")
            self.service.shareChanged(member, wanted)
            return {}
        self._checkPeerConnections(member, 1)
        if params.get("simulcast") and wanted["video"]:
            offer = yield engine.publish(member.memberID, wanted["audio"], wanted["video"], cap,
                                         simulcast=True)
        else:  # as before (engines without simulcast need not know it)
            offer = yield engine.publish(member.memberID, wanted["audio"], wanted["video"], cap)
        if member.conference is None:  # left while the offer was being made
            engine.unpublish(member.memberID)
            raise ProtocolError(409)
        self.service.shareChanged(member, wanted)

        def sendOffer():
            tid = secrets.token_hex(16)
            self._dropPending("MEDIA_RECEIVE_response")
            self._pending[("MEDIA_RECEIVE_response", tid)] = ("publish", None)
            self.send({"messageType": "MEDIA_RECEIVE_request", "sdp": offer, "transactionID": tid})

        return {}, sendOffer

    def _dropPending(self, rtype: str, tid: str | None = None) -> None:
        for key in [k for k in self._pending if k[0] == rtype and (tid is None or k[1] == tid)]:
            del self._pending[key]

    @defer.inlineCallbacks
    def request_media(self, params):
        """1.4 and 4.6: subscribe to other members' media."""
        member = self.member
        yield self.service.checkAllowed(member, Action.SUBSCRIBE)
        conf = member.conference
        if conf is None:
            raise ProtocolError(409)
        last = {e["memberID"]: e for e in params["members"]}  # the last entry for a member wins
        entries = [(conf.member(mid), e) for mid, e in last.items()]
        if len(params["members"]) > len(conf.members):
            # Each entry may cost a peer connection: no more than the room has.
            raise ProtocolError(400, detail="more members entries than the conference has members")
        engine = self.service.engine
        self._checkPeerConnections(member, sum(
            1 for publisher, e in entries
            if publisher is not member and publisher.memberID not in self._subscribedTo
            and any(e[kind] and engine.isPublishing(publisher.memberID, kind) for kind in KINDS)))
        return {}, lambda: self._subscribeAll(member, entries)

    def _checkPeerConnections(self, member: Member, new: int) -> None:
        """
        @raise ProtocolError: 503 when C{new} more peer connections would pass
            C{[limits] max_peer_connections} or C{max_peer_connections_per_member}.
        """
        limits = self.service.config.limits
        engine = self.service.engine
        for scope, cap, count in (
                ("server", limits.max_peer_connections, engine.peerConnections),
                ("member", limits.max_peer_connections_per_member,
                 lambda: engine.peerConnections(member.memberID))):
            if new and cap and count() + new > cap:
                self.service.counters["peer_connection_caps"][scope] += 1
                raise ProtocolError(503, detail=f"too many peer connections ({scope})")

    @defer.inlineCallbacks
    def _subscribeAll(self, member: Member, entries):
        engine = self.service.engine
        for publisher, entry in entries:
            if publisher is member or self.member is not member:
                continue
            pid = publisher.memberID
            if not (entry["audio"] or entry["video"]):
                engine.unsubscribe(member.memberID, pid)
                self._subscribedTo.discard(pid)
                self._dropPending("SDP_response", pid)
                self._offers.pop(pid, None)
                self._live.pop(pid, None)
                continue
            outstanding = self._offers.get(pid)
            if outstanding is not None and not outstanding.abandoned(self.service.clock.seconds()):
                # protocol.md 4.10: never a second offer while one is unanswered.
                outstanding.queued = entry
                continue
            if self._qualityInPlace(member, publisher, entry):
                continue
            yield self._offerSubscription(member, publisher, entry)

    def _qualityInPlace(self, member: Member, publisher: Member, entry: dict) -> bool:
        """
        protocol.md 4.11: an entry that changes only the C{quality} of an
        answered subscription (same kinds, no new media since) changes it in
        place, without a new offer.  The same request with the same quality
        is an ordinary replacement (a client mending a broken connection).
        """
        live = self._live.get(publisher.memberID)
        quality = entry["quality"]
        if quality is None or live is None:
            return False
        engine = self.service.engine
        pid = publisher.memberID
        kinds = (bool(entry["audio"] and engine.isPublishing(pid, "audio")),
                 bool(entry["video"] and engine.isPublishing(pid, "video")))
        if kinds != live[0] or publisher.shareEpoch != live[1] or quality == live[2]:
            return False
        if not engine.setQuality(member.memberID, pid, quality):
            return False
        self._live[pid] = (kinds, live[1], quality)
        return True

    @defer.inlineCallbacks
    def _offerSubscription(self, member: Member, publisher: Member, entry: dict):
        """
        Make (or replace) one subscription and send its C{SDP_request}; the
        offer is then outstanding until the client answers it.
        """
        engine = self.service.engine
        pid = publisher.memberID
        audio = entry["audio"] and engine.isPublishing(pid, "audio")
        video = entry["video"] and engine.isPublishing(pid, "video")
        if not (audio or video):
            return
        offer = _Offer(self.service.clock.seconds(), publisher.shareEpoch)
        self._offers[pid] = offer
        self._live.pop(pid, None)
        quality = entry.get("quality") or "high"
        offer.kinds, offer.quality = (bool(audio), bool(video)), quality
        try:
            if quality == "high":  # the default: engines without simulcast need not know it
                sdp = yield engine.subscribe(member.memberID, pid, audio, video)
            else:
                sdp = yield engine.subscribe(member.memberID, pid, audio, video, quality=quality)
            self._subscribedTo.add(pid)
        except ProtocolError as e:
            _log.info("subscription of {member_id} to {publisher_id} refused: {status}",
                      member_id=member.memberID[:12], publisher_id=pid[:12], status=e.status)
            if self._offers.get(pid) is offer:
                del self._offers[pid]
            return
        if self.member is not member or publisher.conference is None:
            engine.unsubscribe(member.memberID, pid)
            self._offers.pop(pid, None)
            return
        if self._offers.get(pid) is not offer:  # ended while the offer was being made
            return
        offer.sentAt = self.service.clock.seconds()
        offer.shareEpoch = publisher.shareEpoch
        self._pending[("SDP_response", pid)] = ("subscribe", pid)
        self.send({"messageType": "SDP_request", "sdp": sdp, "member": publisher.ref(),
                   "transactionID": pid})

    def _offerSettled(self, publisherID: str) -> defer.Deferred | None:
        """
        The client answered (or declined) the outstanding offer for this
        publisher.  A C{MEDIA_request} that came while it was outstanding gets
        its own offer only if the client had been told of new media after
        that offer went out (it re-subscribes on every C{MEDIA_indication}
        with C{available: true}, protocol.md 4.10); one sent before is
        answered by the offer it has already answered.
        """
        offer = self._offers.pop(publisherID, None)
        member = self.member
        if offer is None or offer.queued is None or member is None:
            return None
        publisher = member.conference.members.get(publisherID) if member.conference else None
        if publisher is None or publisher.shareEpoch <= offer.shareEpoch:
            return None
        return self._offerSubscription(member, publisher, offer.queued)

    # -- the client's answers to our requests ------------------------------

    def _clientResponse(self, envelope: Envelope):
        key = (envelope.messageType, envelope.transactionID)
        pending = self._pending.get(key)
        if pending is None or self.member is None:
            self._error("ERROR_response", envelope.transactionID, ProtocolError(400),
                        envelope.messageType + " (not expected)")
            return None
        body = envelope.body
        # protocol.md 4.10: a response without status means 200.
        status, sdp = body.get("status", 200), body.get("sdp")
        if isinstance(status, bool) or not isinstance(status, int):
            self._error("ERROR_response", envelope.transactionID, ProtocolError(400),
                        envelope.messageType)
            return None
        kind, publisherID = pending
        member = self.member
        if status != 200:
            del self._pending[key]
            _log.info("member {member_id} declined a {kind} offer: {status}",
                      member_id=member.memberID[:12], kind=kind, status=status)
            if kind == "subscribe":
                return self._offerSettled(publisherID)
            return None
        try:
            if not isinstance(sdp, str) or len(sdp) > self.service.config.limits.max_message_bytes:
                raise ProtocolError(400, detail="sdp must be a string")
            sdp = unescapeSdp(sdp)  # protocol.md 4.10: the original client escape()s it
        except ProtocolError as e:
            self._error("ERROR_response", envelope.transactionID, e, envelope.messageType)
            return None
        engine = self.service.engine
        if kind == "publish":
            d = defer.maybeDeferred(engine.acceptPublishAnswer, member.memberID, sdp)
        else:
            d = defer.maybeDeferred(engine.acceptSubscribeAnswer, member.memberID, publisherID, sdp)

        def accepted(_):
            self._pending.pop(key, None)
            if kind == "subscribe":
                offer = self._offers.get(publisherID)
                if offer is not None and offer.kinds is not None:
                    self._live[publisherID] = (offer.kinds, offer.shareEpoch, offer.quality)
                return self._offerSettled(publisherID)

        def failed(f):
            if f.check(ProtocolError):
                error = f.value
            else:
                _log.failure("internal error applying an answer", f)
                error = ProtocolError(500)
            self._error("ERROR_response", envelope.transactionID, error, envelope.messageType)

        d.addCallbacks(accepted, failed)
        return d.addErrback(lambda f: _log.failure("internal error after an answer", f))


class _Offer:
    """
    A subscription offer (C{SDP_request}) the client has not answered yet.

    @ivar sentAt: when it was made (clock seconds).
    @ivar shareEpoch: the publisher's L{Member.shareEpoch} when it went out.
    @ivar queued: the C{MEDIA_request} entry for the same publisher that
        came while it was outstanding, if any.
    """

    #: After this many seconds without an answer the offer is abandoned and a
    #: new C{MEDIA_request} for the publisher is offered at once.
    TIMEOUT = 10.0

    def __init__(self, sentAt: float, shareEpoch: int):
        self.sentAt = sentAt
        self.shareEpoch = shareEpoch
        self.queued: dict | None = None
        self.kinds: tuple[bool, bool] | None = None
        self.quality: str | None = None

    def abandoned(self, now: float) -> bool:
        """Has the client left it unanswered for too long?"""
        return now - self.sentAt > self.TIMEOUT
