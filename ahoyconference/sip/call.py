# -*- test-case-name: tests.test_sip_baresip -*-
"""
One phone call: its dialog, RTP socket and mixer, the PIN prompt, and the
member it becomes (docs/sip.md).  L{PhoneSink} is the member's
L{MemberSink}: it ignores the JSON indications (a phone has no screen) but
watches the room to know whom to mix, and its C{disconnect} (a kick) is a BYE.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from ahoyconference.conference import Member
from ahoyconference.interfaces import ClientInfo, ProtocolError
from ahoyconference.logs import logger
from ahoyconference.sip import g711
from ahoyconference.sip.codecs import codecFor
from ahoyconference.sip.dialog import Dialog
from ahoyconference.sip.mixer import Mixer
from ahoyconference.sip.rtp import FRAME, TONES, RtpSocket
from ahoyconference.sip.sdp import Offer, SdpError, makeAnswer, newSessionID

_log = logger(__name__)

#: A SIP status for each refusal of a join (docs/sip.md).
SIP_STATUS = {404: 404, 403: 403, 470: 480, 486: 486, 503: 503, 409: 480}


class PhoneSink:
    """The L{MemberSink} of a phone."""

    def __init__(self, call: PhoneCall):
        self.call = call

    def sendEncoded(self, data: bytes) -> None:
        """An indication: the room may have changed (whom to mix)."""
        self.call.roomChanged()

    def disconnect(self) -> None:
        """Kicked (the member is already gone): hang up with a BYE."""
        self.call.member = None
        self.call.hangup("kicked")


class PhoneCall:
    """
    A call from answering to BYE.

    @ivar state: C{"new"} (not answered), C{"pin"}, C{"joining"}, C{"joined"}, C{"ended"}.
    @ivar member: the L{Member} while in the room.
    """

    def __init__(self, gateway, dialog: Dialog, offer: Offer, rtp: RtpSocket, port,
                 conferenceID: str, name: str, client: ClientInfo):
        self.gateway = gateway
        self.clock = gateway.clock
        self.dialog = dialog
        self.offer = offer
        self.rtp = rtp
        self.port = port
        self.conferenceID = conferenceID
        self.name = name
        self.client = client
        self.state = "new"
        self.member: Member | None = None
        self.sink = PhoneSink(self)
        self.mixer = Mixer(self.clock.seconds, gateway.settings.max_speakers,
                           gateway.counters["mixer"])
        self.pin = ""
        self.failures = 0
        self.sessionID = newSessionID()
        self.sdpVersion = 1
        self.answer = ""
        self.refresher = "uac"
        self.interval = 0
        self.inviteTxn = None
        self._queue: list[list[int]] = []
        self._seq = 0
        self._feed: Callable | None = None
        self._level: Callable | None = None
        self._taps: set[str] = set()
        self._sessionTimer = None
        self._pinTimer = None
        self._ticker = LoopingCall.withCount(self._tick)
        self._ticker.clock = self.clock
        rtp.onAudio = self._audio
        rtp.onDigit = self._digit
        self.codec = codecFor(offer.codec)
        rtp.configure(offer.address, offer.port, self.codec, offer.pt, offer.dtmfPT,
                      not offer.hold)

    # -- SDP ---------------------------------------------------------------

    def makeAnswer(self, offer: Offer) -> bytes:
        """Our answer to an offer (the first, or a re-INVITE's); a new version each time."""
        if offer.codec != self.offer.codec:
            # A re-INVITE may change the codec; subscribers were offered the
            # first one, so the call keeps its first (RFC 3264 allows it: we
            # answer with it only if it is still offered).
            raise SdpError(f"the call's codec ({self.offer.codec}) is no longer offered")
        self.offer = offer
        self.rtp.configure(offer.address, offer.port, self.codec, offer.pt, offer.dtmfPT,
                           not offer.hold)
        self.answer = makeAnswer(offer, self.gateway.settings.rtpAddress(),
                                 self.port.getHost().port, self.sessionID, self.sdpVersion)
        self.sdpVersion += 1
        return self.answer.encode()

    # -- the 20 ms clock ---------------------------------------------------

    def start(self) -> None:
        """The call is answered: start sending."""
        if not self._ticker.running:
            self._ticker.start(FRAME / 8000, now=False)

    def _tick(self, count: int) -> None:
        if count > 1:  # the reactor was late: the phone's clock moves on all the same
            self.gateway.counters["mixer"]["late_frames"] += count - 1
            self.rtp.skip(FRAME * (count - 1))
        if self._queue:
            self.rtp.sendSamples(self._queue.pop(0))
        elif self.state == "joined":
            samples = self.mixer.frame()
            self.rtp.sendSamples(samples)
        else:
            self.rtp.sendSamples([0] * FRAME)

    def play(self, tone: str) -> None:
        """Queue a prompt."""
        self._queue.extend(TONES[tone])

    # -- audio and digits from the phone --------------------------------------

    def _audio(self, data: bytes) -> None:
        if self._feed is None:
            return
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:
            offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
        samples = self.codec.decode(data[offset:])
        self._level(self.clock.seconds(), g711.levelOf(samples))
        # Numbered afresh: phones number their telephone-events and comfort
        # noise in the same sequence, which would look like loss to browsers.
        self._seq = (self._seq + 1) & 0xFFFF
        self._feed(data[:2] + self._seq.to_bytes(2, "big") + data[4:])

    def _digit(self, key: str) -> None:
        if self.state != "pin":
            return
        if key == "#":
            pin, self.pin = self.pin, ""
            self.join(pin).addErrback(
                lambda f: _log.failure("SIP: internal error joining call {call_id}", f,
                                       call_id=self.dialog.callID[:16]))
        elif key == "*":
            self.pin = ""
        elif len(self.pin) < 64:
            self.pin += key

    def digit(self, key: str) -> None:
        """A key from SIP INFO (the fallback of RFC 4733)."""
        self._digit(key)

    # -- joining ---------------------------------------------------------------

    #: Seconds a caller has to get the PIN right before the call is ended.
    PIN_TIMEOUT = 60.0

    def askPin(self) -> None:
        """The conference has a password: prompt for it (at most L{PIN_TIMEOUT} seconds)."""
        self.state = "pin"
        self.play("pin")
        self._pinTimer = self.clock.callLater(self.PIN_TIMEOUT, self._pinTimeout)

    def _pinTimeout(self) -> None:
        self._pinTimer = None
        if self.state in ("pin", "joining"):
            self.gateway.counters["timeouts"]["pin"] += 1
            self.hangup("no PIN in time")

    def join(self, pin: str) -> defer.Deferred:
        """
        Join with this PIN (the conference password; empty without one).

        @return: a Deferred firing with C{None} when joined, failing with
            L{ProtocolError} when refused; refusals after the call was
            answered are handled here (tone, retry, or BYE).
        """
        self.state = "joining"
        params = {"conferenceID": self.conferenceID, "name": self.name, "password": pin,
                  "invitation": None, "webrtc": False}
        d = self.gateway.service.join(self.sink, self.client, params)
        d.addCallback(self._joined)
        d.addErrback(self._refused)
        return d

    def _joined(self, result) -> None:
        member, _ = result
        if self.state == "ended":
            self.gateway.service.leave(member, "hung up before joining")
            raise ProtocolError(487)
        self.member = member
        self.state = "joined"
        if self._pinTimer is not None and self._pinTimer.active():
            self._pinTimer.cancel()
        if member.speaker:
            # A listener's phone only hears (protocol.md 4.2: it may not share).
            member.conference.share(member, {"audio": True, "video": False})
            engine = self.gateway.service.engine
            codec = self.codec
            self._feed, self._level = engine.publishPlain(
                member.memberID, {self.offer.pt: codec.key}, {self.offer.pt: codec.rate})
        self.gateway.counters["calls"]["joined"] += 1
        _log.info("SIP: call {call_id} ({name!r}) joined {conference_id} as member {member_id} "
                  "({role})", call_id=self.dialog.callID[:16], name=self.name,
                  conference_id=self.conferenceID, member_id=member.memberID[:12],
                  role=member.role.label)
        if self.inviteTxn is not None and self.inviteTxn.final is None:
            self.gateway.answer(self)
        else:
            self.play("welcome")
        self.roomChanged()

    def _refused(self, f):
        f.trap(ProtocolError)
        status = f.value.status
        self.gateway.counters["refused"][status] += 1
        if self.state == "ended":
            return None
        if status == 403 and self.inviteTxn.final is not None:
            self.failures += 1
            _log.info("SIP: call {call_id}: wrong PIN for {conference_id} ({n} of {max})",
                      call_id=self.dialog.callID[:16], conference_id=self.conferenceID,
                      n=self.failures, max=self.gateway.settings.pin_attempts)
            self.gateway.counters["pin_failures"]["total"] += 1
            self.play("wrong")
            if self.failures >= self.gateway.settings.pin_attempts:
                self.state = "ending"
                # Let the "wrong" tone play out before the BYE.
                self.clock.callLater(len(TONES["wrong"]) * FRAME / 8000 + 0.1,
                                     self.hangup, "wrong PIN")
            else:
                self.state = "pin"
                self.play("pin")
            return None
        _log.info("SIP: call {call_id} for {conference_id} refused: {status}",
                  call_id=self.dialog.callID[:16], conference_id=self.conferenceID,
                  status=status)
        if self.inviteTxn is not None and self.inviteTxn.final is None:
            return f  # the gateway answers the INVITE with the status
        self.hangup(f"refused ({status})")
        return None

    # -- the room ---------------------------------------------------------------

    def roomChanged(self) -> None:
        """Tap the audio of every other member who publishes some; untap those gone."""
        member = self.member
        if member is None or member.conference is None:
            return
        engine = self.gateway.service.engine
        wanted = {m.memberID for m in member.conference.members.values()
                  if m is not member and engine.isPublishing(m.memberID, "audio")}
        for pid in wanted - self._taps:
            engine.tapAudio(member.memberID, pid, self._tapped)
        for pid in self._taps - wanted:
            engine.untapAudio(member.memberID, pid)
            self.mixer.remove(pid)
        self._taps = wanted

    def _tapped(self, publisherID: str, data: bytes, levelId: int) -> None:
        self.mixer.packet(publisherID, data, levelId)

    # -- session timer (RFC 4028) ---------------------------------------------

    def setSessionTimer(self, interval: int, refresher: str) -> None:
        """(Re)start the session timer after an INVITE, re-INVITE or UPDATE."""
        self.interval, self.refresher = interval, refresher
        if self._sessionTimer is not None and self._sessionTimer.active():
            self._sessionTimer.cancel()
        if not interval:
            self._sessionTimer = None
        elif refresher == "uas":
            self._sessionTimer = self.clock.callLater(interval / 2, self.gateway.refresh, self)
        else:
            # RFC 4028 10: BYE a little before the session expires.
            self._sessionTimer = self.clock.callLater(interval - min(32, interval / 3),
                                                      self._expired)

    def _expired(self) -> None:
        self.gateway.counters["timeouts"]["session"] += 1
        self.hangup("session expired")

    # -- ending ------------------------------------------------------------------

    def hangup(self, why: str) -> None:
        """We end the call: BYE, then clean up."""
        if self.state == "ended":
            return
        answered = self.inviteTxn is None or (self.inviteTxn.final is not None
                                              and self.inviteTxn.final.status < 300)
        self.end(why)
        if answered:
            self.gateway.sendBye(self)

    def end(self, why: str) -> None:
        """The call is over (either side): leave the room, close the media."""
        if self.state == "ended":
            return
        self.state = "ended"
        if self._ticker.running:
            self._ticker.stop()
        for timer in (self._sessionTimer, self._pinTimer):
            if timer is not None and timer.active():
                timer.cancel()
        member, self.member = self.member, None
        if member is not None:
            self.gateway.service.leave(member, f"hung up ({why}):")
        self._taps.clear()
        self._feed = self._level = None
        self.port.stopListening()
        self.gateway.ended(self)
        _log.info("SIP: call {call_id} ended ({why}); {received} RTP packets in, {sent} out",
                  call_id=self.dialog.callID[:16], why=why, received=self.rtp.received,
                  sent=self.rtp.sent)
