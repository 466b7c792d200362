# -*- test-case-name: tests.test_sip_baresip -*-
"""
L{SipGateway}: the conference gateway, SIP's transaction user
(docs/sip.md).  A call to C{sip:<conferenceID>@<server>} joins that
conference: INVITE with an SDP offer, our answer, the PIN prompt when the
conference has a password, then the phone is a member without WebRTC.

Every refusal has a SIP status, a log line and a counter (docs/sip.md).
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from twisted.application.service import Service
from twisted.internet import defer

from ahoyconference.config import SipSettings
from ahoyconference.interfaces import ClientInfo, IPlainMediaEngine, ProtocolError
from ahoyconference.logs import logger
from ahoyconference.sip import sdp as _sdp
from ahoyconference.sip.auth import DigestAuth
from ahoyconference.sip.call import SIP_STATUS, PhoneCall
from ahoyconference.sip.dialog import Dialog
from ahoyconference.sip.message import Message, NameAddr, SipParseError, SipUri
from ahoyconference.sip.rtp import PortRange, RtpSocket, infoKey
from ahoyconference.sip.timer import IntervalTooSmall, negotiate, refresh
from ahoyconference.sip.transaction import ServerTransaction, Transactions
from ahoyconference.sip.transport import (
    Origin,
    Receiver,
    SipDatagramProtocol,
    SipStreamFactory,
)

_log = logger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE"


class SipGateway(Service):
    """
    Listens for SIP (UDP and TCP), answers calls and keeps them.

    @ivar calls: Call-ID → L{PhoneCall}.
    @ivar counters: name → L{Counter}, read by /metrics.
    """

    def __init__(self, service, settings: SipSettings, reactor, clock=None):
        self.service = service
        self.settings = settings
        self.reactor = reactor
        self.clock = clock or reactor
        self.counters: dict[str, Counter] = {
            name: Counter() for name in ("requests", "responses", "refused", "dropped",
                                         "timeouts", "retransmissions", "calls",
                                         "pin_failures", "errors", "mixer", "auth")}
        self.calls: dict[str, PhoneCall] = {}
        self.transactions = Transactions(self.clock, self, self.counters)
        self._networks = [ipaddress.ip_network(p, strict=False) for p in settings.peers]
        self.receiver = Receiver(self.transactions.received, self.counters, self.allowedPeer)
        first, last = settings.rtp_ports
        self.ports = PortRange(reactor, settings.rtpAddress(), first, last)
        self._listening: list = []
        self.auth = (DigestAuth(settings.auth_username, settings.auth_password, self.clock)
                     if settings.auth_password else None)

    def allowedPeer(self, host: str) -> bool:
        """May this address send us SIP (C{[sip] peers})?"""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self._networks)

    # -- service -------------------------------------------------------------

    def startService(self):
        """Listen on every C{[sip] listen} address."""
        super().startService()
        for transport, address, port in self.settings.listenAddresses():
            if transport == "udp":
                p = self.reactor.listenUDP(port, SipDatagramProtocol(self.receiver),
                                           interface=address)
            else:
                p = self.reactor.listenTCP(port, SipStreamFactory(self.receiver),
                                           interface=address)
            self._listening.append(p)
            _log.info("SIP listening on {transport}:{address}:{port}", transport=transport,
                      address=address, port=p.getHost().port)

    def stopService(self):
        """Hang up every call and stop listening."""
        for call in list(self.calls.values()):
            call.hangup("server stopping")
        self.transactions.close()
        listening, self._listening = self._listening, []
        super().stopService()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in listening])

    def addresses(self) -> list[tuple[str, str, int]]:
        """C{(transport, address, port)} actually listened on (port 0 resolved)."""
        return [("tcp" if hasattr(p, "factory") else "udp", p.getHost().host, p.getHost().port)
                for p in self._listening]

    # -- the transaction user --------------------------------------------------

    def request(self, txn: ServerTransaction) -> None:
        """A new request."""
        msg = txn.request
        handler = getattr(self, "sip_" + msg.method, None)
        if handler is None:
            self._refuse(txn, 501, "method not implemented", extra=[["Allow", ALLOW]])
            return
        try:
            handler(txn)
        except SipParseError as e:
            self._refuse(txn, 400, str(e))
        except Exception:
            self.counters["errors"]["internal"] += 1
            _log.failure("SIP: internal error handling {method}", method=msg.method)
            if txn.final is None:
                txn.reply(500, toTag=self._tagFor(msg))

    def _refuse(self, txn: ServerTransaction, status: int, why: str, extra=()) -> None:
        self.counters["refused"][status] += 1
        _log.info("SIP: {method} from {addr} refused: {status} ({why})",
                  method=txn.request.method, addr=txn.origin.addr[0], status=status, why=why)
        txn.reply(status, toTag=self._tagFor(txn.request), extra=extra)

    def _tagFor(self, msg: Message) -> str | None:
        call = self.calls.get(msg.get("Call-ID"))
        return call.dialog.localTag if call is not None else "x" + msg.get("Call-ID", "")[:8]

    def ack(self, msg: Message, origin: Origin) -> None:
        """An ACK for a 2xx: stop retransmitting it (the answer needs no more)."""
        call = self.calls.get(msg.get("Call-ID"))
        if call is None or call.inviteTxn is None:
            self.counters["dropped"]["stray-ack"] += 1
            return
        call.inviteTxn.acked()

    def noAck(self, txn: ServerTransaction) -> None:
        """Our 2xx was never ACKed: the call is dead (RFC 3261 13.3.1.4)."""
        call = self.calls.get(txn.request.get("Call-ID"))
        if call is not None and call.inviteTxn is txn:
            call.hangup("no ACK")

    def cancelled(self, txn: ServerTransaction) -> None:
        """CANCEL of an INVITE not answered yet: 487, and the call is gone."""
        call = self.calls.get(txn.request.get("Call-ID"))
        txn.reply(487, toTag=self._tagFor(txn.request))
        self.counters["calls"]["cancelled"] += 1
        if call is not None:
            call.end("cancelled")

    # -- requests ----------------------------------------------------------------

    def sip_OPTIONS(self, txn: ServerTransaction) -> None:
        """Capabilities (and a PBX's keep-alive)."""
        txn.reply(200, toTag=self._tagFor(txn.request),
                  extra=[["Allow", ALLOW], ["Accept", "application/sdp"],
                         ["Supported", "timer"]])

    def sip_INVITE(self, txn: ServerTransaction) -> None:
        """A new call, or a re-INVITE in a call."""
        msg = txn.request
        call = self.calls.get(msg.get("Call-ID"))
        if call is not None and NameAddr.parse(msg.get("To")).params.get("tag"):
            self._reinvite(call, txn)
            return
        if call is not None:
            txn.reply(482, "Loop Detected")  # the same INVITE along another path
            return
        if NameAddr.parse(msg.get("To")).params.get("tag"):
            self._refuse(txn, 481, "re-INVITE for no call")
            return
        self._newCall(txn)

    def _sessionExpires(self, txn: ServerTransaction) -> tuple[int, str] | None:
        """RFC 4028: the interval and refresher; C{None} when answered 422."""
        try:
            return negotiate(txn.request, self.settings.session_expires, self.settings.min_se)
        except IntervalTooSmall as e:
            self._refuse(txn, 422, f"session interval {e.args[0]} s too small",
                         extra=[["Min-SE", str(self.settings.min_se)]])
            return None

    def _newCall(self, txn: ServerTransaction) -> None:
        msg = txn.request
        origin = txn.origin
        try:
            uri = SipUri.parse(msg.uri)
        except SipParseError:
            self._refuse(txn, 416 if ":" in msg.uri else 400, "not a sip: URI")
            return
        if self.auth is not None:
            verdict = self.auth.check("INVITE", msg.get("Authorization"))
            self.counters["auth"][verdict] += 1
            if verdict in ("missing", "stale"):
                # A challenge, not a refusal: logged at debug level only.
                txn.reply(401, toTag=self._tagFor(msg), extra=[
                    ["WWW-Authenticate", self.auth.challenge(stale=verdict == "stale")]])
                return
            if verdict == "wrong":
                self._refuse(txn, 403, "wrong credentials")
                return
        cid = uri.user
        conf = self.service.conferences.get(cid)
        if not cid or conf is None:
            self._refuse(txn, 404, f"no conference {cid!r}")
            return
        try:
            conf.checkJoin()
        except ProtocolError as e:
            self._refuse(txn, SIP_STATUS.get(e.status, 480), f"conference {cid}: {e.status}")
            return
        if not msg.body or (msg.get("Content-Type", "").split(";")[0].strip().lower()
                            != "application/sdp"):
            self._refuse(txn, 488, "no SDP offer in the INVITE", extra=[["Accept",
                                                                        "application/sdp"]])
            return
        try:
            offer = _sdp.parseOffer(msg.body.decode("utf-8", "replace"))
        except _sdp.SdpError as e:
            self._refuse(txn, 488, str(e))
            return
        timer = self._sessionExpires(txn)
        if timer is None:
            return
        if not IPlainMediaEngine.providedBy(self.service.engine):
            self._refuse(txn, 503, "the media engine takes no phones")
            return
        dialog = Dialog(msg, origin)
        rtp = RtpSocket(lambda data: None, lambda key: None, self.counters)
        port = self.ports.listen(rtp)
        if port is None:
            self._refuse(txn, 503, "no free RTP port")
            return
        caller = NameAddr.parse(msg.get("From"))
        name = caller.display or SipUri.parse(caller.uri).user or "phone"
        client = ClientInfo(ip=origin.addr[0], headers={"user-agent": msg.get("User-Agent", "")})
        call = PhoneCall(self, dialog, offer, rtp, port, cid, name[:64], client)
        call.inviteTxn = txn
        call.setSessionTimer(*timer)
        self.calls[dialog.callID] = call
        self.counters["calls"]["total"] += 1
        _log.info("SIP: call {call_id} from {name!r} ({addr}) for {conference_id} ({codec})",
                  call_id=dialog.callID[:16], name=call.name, addr=origin.addr[0],
                  conference_id=cid, codec=offer.codec)
        txn.reply(100)
        # Without a PIN the join happens before we answer, so that a refusal
        # is a SIP status; with one, we answer and prompt.  A conference with
        # any password always asks (the PIN picks the role, as a password
        # does; "#" alone is the empty password); other policies are asked.
        settings = conf.settings
        if settings.password or settings.moderatorPassword or settings.listenerPassword:
            d = defer.fail(ProtocolError(403))
        else:
            d = self.service.askPolicy("roleFor", client, settings, call.name, "")

        def noPinNeeded(_):
            if call.state == "ended":  # cancelled while the policy thought
                return None
            return call.join("")

        def pinNeeded(f):
            f.trap(ProtocolError)
            if f.value.status != 403 or call.state == "ended":
                return f
            self.answer(call)
            call.askPin()
            return None

        def refused(f):
            f.trap(ProtocolError)
            if call.state != "ended" and txn.final is None:
                status = SIP_STATUS.get(f.value.status, 480)
                self._refuse(txn, status, f"join refused: {f.value.status}")
                call.end(f"refused {status}")
            return None

        d.addCallbacks(noPinNeeded, pinNeeded)
        d.addErrback(refused)
        d.addErrback(lambda f: _log.failure("SIP: internal error answering a call", f))

    def answer(self, call: PhoneCall) -> None:
        """Send the 200 with our SDP answer and start the media."""
        txn = call.inviteTxn
        if txn.final is not None:
            return
        txn.reply(200, toTag=call.dialog.localTag, body=call.makeAnswer(call.offer),
                  extra=self._answerHeaders(call))
        call.start()
        if call.state == "joined":
            call.play("welcome")

    def _answerHeaders(self, call: PhoneCall) -> list:
        extra = [["Contact", call.dialog.contact()], ["Allow", ALLOW],
                 ["Supported", "timer"], ["Content-Type", "application/sdp"]]
        if call.interval:
            extra.append(["Session-Expires", f"{call.interval};refresher={call.refresher}"])
            extra.append(["Require", "timer"])
        return extra

    def _reinvite(self, call: PhoneCall, txn: ServerTransaction) -> None:
        """A re-INVITE: hold, resume, a new address, or a session refresh."""
        msg = txn.request
        if not call.dialog.matches(msg) or not call.dialog.checkSequence(msg):
            self._refuse(txn, 500 if call.dialog.matches(msg) else 481, "out of order")
            return
        if call.inviteTxn is not None and call.inviteTxn.final is None:
            self._refuse(txn, 491, "the first INVITE is still open")
            return
        offer = call.offer
        try:
            if msg.body:
                offer = _sdp.parseOffer(msg.body.decode("utf-8", "replace"),
                                        prefer=call.offer.codec)
            timer = self._sessionExpires(txn)
            if timer is None:
                return
            body = call.makeAnswer(offer)
        except _sdp.SdpError as e:
            self._refuse(txn, 488, str(e))
            return
        call.setSessionTimer(*timer)
        call.inviteTxn = txn
        txn.reply(200, toTag=call.dialog.localTag, body=body, extra=self._answerHeaders(call))
        _log.info("SIP: call {call_id} re-INVITE: {what}", call_id=call.dialog.callID[:16],
                  what="hold" if offer.hold else "active")

    def sip_UPDATE(self, txn: ServerTransaction) -> None:
        """A session refresh without SDP (RFC 4028 with RFC 3311)."""
        call = self._inDialog(txn)
        if call is None:
            return
        if txn.request.body:
            self._refuse(txn, 488, "UPDATE with SDP is not taken")
            return
        timer = self._sessionExpires(txn)
        if timer is None:
            return
        call.setSessionTimer(*timer)
        extra = [["Contact", call.dialog.contact()], ["Supported", "timer"]]
        if call.interval:
            extra += [["Session-Expires", f"{call.interval};refresher={call.refresher}"],
                      ["Require", "timer"]]
        txn.reply(200, toTag=call.dialog.localTag, extra=extra)

    def _inDialog(self, txn: ServerTransaction) -> PhoneCall | None:
        call = self.calls.get(txn.request.get("Call-ID"))
        if call is None or not call.dialog.matches(txn.request):
            self._refuse(txn, 481, "no such call")
            return None
        if not call.dialog.checkSequence(txn.request):
            self._refuse(txn, 500, "CSeq out of order")
            return None
        return call

    def sip_BYE(self, txn: ServerTransaction) -> None:
        """The phone hangs up."""
        call = self._inDialog(txn)
        if call is None:
            return
        txn.reply(200, toTag=call.dialog.localTag)
        self.counters["calls"]["hung_up"] += 1
        call.end("BYE")

    def sip_INFO(self, txn: ServerTransaction) -> None:
        """A key by SIP INFO (application/dtmf-relay or application/dtmf)."""
        call = self._inDialog(txn)
        if call is None:
            return
        ctype = txn.request.get("Content-Type", "").split(";")[0].strip().lower()
        key = infoKey(ctype, txn.request.body.decode("utf-8", "replace"))
        if key is None:
            self._refuse(txn, 415, f"INFO with {ctype or 'no body type'}")
            return
        txn.reply(200, toTag=call.dialog.localTag)
        call.digit(key)

    # -- requests we send ----------------------------------------------------------

    def sendBye(self, call: PhoneCall) -> defer.Deferred:
        """End the call from our side."""
        d = self.transactions.send(call.dialog.request("BYE"), call.dialog.origin)
        self.counters["calls"]["bye_sent"] += 1
        return d

    def refresh(self, call: PhoneCall) -> None:
        """We are the refresher (RFC 4028): a re-INVITE with the same SDP."""
        refresh(self.transactions, call)

    def ended(self, call: PhoneCall) -> None:
        """A call is over: forget it."""
        if self.calls.get(call.dialog.callID) is call:
            del self.calls[call.dialog.callID]
