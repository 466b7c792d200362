# -*- test-case-name: tests.test_media_hooks -*-
"""
Every access to a private attribute of aiortc, aioice, pylibsrtp and asyncio
(docs/architecture.md, "The private hooks").

The forwarding path takes decrypted packets from under aiortc and sends
its own, so it must reach past the public API of the libraries it builds
on.  All of that reaching is in this module and nowhere else: the rest of
L{ahoyconference.media} calls the functions below.  Each function is
mirrored by a test of the same name in C{tests.test_media_hooks}, and
L{checkHooks} (run when an engine is constructed) refuses to start, with
one line naming the hook, when an upgrade moved what a hook relies on.

The versions the hooks were read against are L{PINNED} (setup.cfg pins
them exactly).

Over 400 lines on purpose: one module holds every private access, so that
an upgrade of aiortc, aioice or pylibsrtp is checked by reading this file
and its test, and nothing else.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import ipaddress
from collections.abc import Callable

import aioice.ice
import aiortc.rtcpeerconnection
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtcpSrPacket

try:  # the zero-copy send path uses pylibsrtp's cffi binding
    from pylibsrtp import Session as _SrtpSession
    from pylibsrtp._binding import ffi as _ffi
    from pylibsrtp._binding import lib as _srtpLib
except ImportError:  # pragma: no cover
    _SrtpSession = _ffi = _srtpLib = None

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}
"""The versions every hook below was read against."""

SRTP_BUFFER = 1500
"""The size of pylibsrtp's per-session C buffer the zero-copy path writes into."""

SRTP_MAX_TRAILER = 144
"""libsrtp's C{SRTP_MAX_TRAILER_LEN}: what protecting may add (tag + MKI)."""

ZERO_COPY_MAX = SRTP_BUFFER - SRTP_MAX_TRAILER
"""The largest plain packet the zero-copy path may protect in place."""

isCodecCompatible = is_codec_compatible
"""aiortc's (unexported) codec matcher, the one its own negotiation uses."""

isRtx = is_rtx
"""aiortc's (unexported) test for an RTX codec."""

srtpProtectInPlace = _srtpLib.srtp_protect if _srtpLib is not None else None
"""libsrtp's C{srtp_protect(srtp_t, void *, int *)} through pylibsrtp's binding."""


class HookMismatch(Exception):
    """A private hook no longer fits the installed aiortc/aioice/pylibsrtp/asyncio."""


# -- peer connections and certificates -------------------------------------------


class _SharedCertificate:
    """Stands in for C{RTCCertificate} while a peer connection is made."""

    def __init__(self, certificate: RTCCertificate):
        self._certificate = certificate

    def generateCertificate(self) -> RTCCertificate:
        return self._certificate


def newPeerConnection(configuration, certificate: RTCCertificate) -> RTCPeerConnection:
    """
    An C{RTCPeerConnection} that uses C{certificate} for DTLS instead of one
    it generates itself.

    aiortc makes a key pair and signs a certificate in every
    C{RTCPeerConnection.__init__} (C{RTCCertificate.generateCertificate()},
    looked up in its module's namespace) and has no way to pass one in;
    browsers use one per origin.  We swap the module's name for the time of
    the constructor (one thread, no await: nothing else runs meanwhile).
    """
    module = aiortc.rtcpeerconnection
    original = module.RTCCertificate
    module.RTCCertificate = _SharedCertificate(certificate)
    try:
        return RTCPeerConnection(configuration)
    finally:
        module.RTCCertificate = original


def freshCertificate(current: RTCCertificate | None, now: datetime.datetime,
                     margin: datetime.timedelta = datetime.timedelta(days=1)) -> RTCCertificate:
    """
    C{current}, or a new certificate when there is none or C{current}
    expires within C{margin} (aiortc's are valid for 30 days).
    """
    if current is None or current.expires - now < margin:
        return RTCCertificate.generateCertificate()
    return current


# -- senders ------------------------------------------------------------------------


def senderSsrcs(sender) -> tuple[int, int]:
    """The SSRC and the RTX SSRC an C{RTCRtpSender} announces in its offer."""
    return sender._ssrc, sender._rtx_ssrc


def fillSenderReports(sender, fill: Callable[[RtcpSrPacket], bool]) -> None:
    """
    Let C{fill} rewrite every sender report of C{sender} before it goes out.

    aiortc's sender makes its reports from its own counters, which stay at
    zero since we send the packets ourselves.  C{fill(packet)} fills in the
    report and returns C{True}, or returns C{False} to suppress it.
    """
    original = sender._send_rtcp

    async def sendRtcp(packets):
        if packets and isinstance(packets[0], RtcpSrPacket) and not fill(packets[0]):
            return
        await original(packets)

    sender._send_rtcp = sendRtcp


# -- the DTLS transport and its ICE connection -------------------------------------


def _iceConnection(dtls):
    return dtls.transport._connection


def nominatedPair(dtls) -> tuple[Callable, tuple] | None:
    """
    C{(sendto, remoteAddress)} of the nominated ICE pair under a DTLS
    transport (component 1; we always bundle and mux RTCP), or C{None}.
    """
    pair = _iceConnection(dtls)._nominated.get(1)
    if pair is None:
        return None
    return pair.protocol.transport.sendto, pair.remote_addr


def sendRtcp(dtls, data: bytes) -> bool:
    """Protect and send RTCP on a DTLS transport's nominated pair, synchronously."""
    if dtls.state != "connected":
        return False
    pair = nominatedPair(dtls)
    if pair is None:
        return False
    sendto, addr = pair
    sendto(dtls._tx_srtp.protect_rtcp(data), addr)
    return True


def srtpProtect(dtls) -> Callable[[bytes], bytes]:
    """The outbound SRTP session's C{protect} of a connected DTLS transport."""
    return dtls._tx_srtp.protect


def srtpReceive(dtls) -> tuple[Callable[[bytes], bytes], Callable[[int], None]]:
    """
    C{(unprotect, removeStream)} of the inbound SRTP session of a connected
    DTLS transport: libsrtp keeps one stream per SSRC it has seen.
    """
    session = dtls._rx_srtp
    return session.unprotect, session.remove_stream


def routeDecrypted(dtls, handleRtp, handleRtcp) -> None:
    """
    Hand the packets aiortc decrypts on this DTLS transport to our
    coroutines C{handleRtp(data, arrival_time_ms)} and C{handleRtcp(data)}
    instead of its RTP router, receivers and jitter buffers.
    """
    dtls._handle_rtp_data = handleRtp
    dtls._handle_rtcp_data = handleRtcp


def _isSrtp(data) -> bool:
    """RTP version 2, and not an RTCP packet type (RFC 5761 4)."""
    return len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224


def takeDatagrams(dtls, receiveSrtp: Callable[[bytes], None]) -> Callable[[], None]:
    """
    Give every SRTP datagram arriving on the ICE sockets under C{dtls}
    straight to C{receiveSrtp}, synchronously; STUN, DTLS and SRTCP go on to
    aioice and aiortc as before.

    This is the forwarding path's entry: aioice would queue each datagram
    and aiortc decrypt it in a task.  C{StunProtocol.datagram_received} is
    wrapped per socket (an instance attribute).

    @return: a function that gives the sockets back.
    """
    wrapped = []
    for protocol in list(_iceConnection(dtls)._protocols):
        original = protocol.datagram_received

        def datagram_received(data, addr, _original=original, _receive=receiveSrtp):
            if _isSrtp(data):
                _receive(data)
            else:
                _original(data, addr)

        protocol.datagram_received = datagram_received
        wrapped.append((protocol, datagram_received))

    def release() -> None:
        for protocol, ours in wrapped:
            if protocol.__dict__.get("datagram_received") is ours:
                del protocol.datagram_received
        wrapped.clear()

    return release


def guardDatagrams(dtls, onDropped: Callable[[], None]) -> None:
    """
    Drop datagrams that are neither DTLS nor SRTP/SRTCP before aioice queues
    them for aiortc (calling C{onDropped} for each): an empty one would end
    aiortc's DTLS receive loop (C{data[0]}), and with it the peer
    connection; anyone can send one to our port.  Wraps the ICE
    connection's C{data_received} (an instance attribute).
    """
    connection = _iceConnection(dtls)
    original = connection.data_received

    def data_received(data, component, _original=original):
        if data and (19 < data[0] < 64 or 127 < data[0] < 192):
            _original(data, component)
        else:
            onDropped()

    connection.data_received = data_received


def guardChecks(pc, allowed: Callable[[str], bool], onRefused: Callable[[str], None]) -> int:
    """
    Make the ICE agents of C{pc} ignore connectivity checks from remote
    addresses for which C{allowed(address)} is false (C{onRefused(address)}
    is called): we would otherwise learn a peer-reflexive candidate there
    and send STUN and media to it.  Call after C{setLocalDescription} (the
    agents exist then).  Wraps the ICE connection's C{request_received}.

    @return: the number of ICE agents guarded (1 with max-bundle).
    """
    guarded = 0
    for transceiver in pc.getTransceivers():
        connection = _iceConnection(transceiver.receiver.transport)
        if connection.__dict__.get("_ahoyGuarded"):
            continue
        original = connection.request_received

        def requestReceived(message, addr, *args, _original=original, **kwargs):
            if not allowed(addr[0]):
                onRefused(addr[0])
                return None
            return _original(message, addr, *args, **kwargs)

        connection.request_received = requestReceived
        connection._ahoyGuarded = True
        guarded += 1
    return guarded


# -- one UDP port (media/udpmux.py) ---------------------------------------------


def _iceConnections(pc) -> list:
    """The distinct aioice connections of C{pc}'s transceivers (one with max-bundle)."""
    connections = []
    for transceiver in pc.getTransceivers():
        connection = _iceConnection(transceiver.receiver.transport)
        if connection not in connections:
            connections.append(connection)
    return connections


def gatherOnShared(pc, newUfrag: Callable[[], str], muxes: list) -> int:
    """
    Make the ICE agents of C{pc} gather their host candidates on the shared
    sockets C{muxes} (L{ahoyconference.media.udpmux.UdpMux}) instead of
    binding a socket each.  Call before C{createOffer} (the offer carries
    the ufrag).

    Each agent gets a local ufrag from C{newUfrag()} (unique among the live
    connections: the sockets demultiplex by it; aioice's own are 4
    characters, too few to be unique among thousands), and its
    C{get_component_candidates} (an instance attribute) makes, for each
    mux, aioice's own C{StunProtocol} on a L{MuxTransport} with the host
    candidate aioice would make; server-reflexive candidates (with a STUN
    server) go through the same protocols, TURN is aioice's as before.

    @return: the number of ICE agents changed.
    """
    changed = 0
    for connection in _iceConnections(pc):
        if connection.__dict__.get("_ahoyShared"):
            continue
        ufrag = newUfrag()
        connection._local_username = ufrag
        original = connection.get_component_candidates

        async def gather(component, addresses, timeout=5, _connection=connection,
                         _original=original, _ufrag=ufrag):
            candidates, protocols = [], []
            for mux in (muxes if addresses else ()):  # none with the relay-only policy
                protocol = aioice.ice.StunProtocol(_connection)
                protocol.connection_made(mux.attach(protocol, _ufrag))
                host, port = mux.address
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host), component=component,
                    transport="udp", priority=candidate_priority(component, "host"),
                    host=host, port=port, type="host")
                candidates.append(protocol.local_candidate)
                protocols.append(protocol)
            _connection._protocols += protocols
            if _connection.stun_server:
                tasks = [asyncio.ensure_future(aioice.ice.server_reflexive_candidate(
                    p, _connection.stun_server)) for p in protocols
                    if ipaddress.ip_address(p.local_candidate.host).version == 4]
                if tasks:
                    done, pending = await asyncio.wait(tasks, timeout=timeout)
                    candidates += [t.result() for t in done if t.exception() is None]
                    for task in pending:
                        task.cancel()
            return candidates + await _original(component=component, addresses=[],
                                                timeout=timeout)

        connection.get_component_candidates = gather
        connection._ahoyShared = True
        changed += 1
    return changed


# -- aioice's host addresses ------------------------------------------------------


_hostStack: list[tuple[str, ...]] = []
_originalHostAddresses: Callable | None = None


def _hostAddresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _hostStack:
        return _originalHostAddresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    result = []
    for address in _hostStack[-1]:
        version = ipaddress.ip_address(address).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            result.append(address)
    return result


def installHostAddresses(addresses: tuple[str, ...]) -> Callable[[], None]:
    """
    Make aioice gather host candidates on exactly these addresses, by
    replacing C{aioice.ice.get_host_addresses} (aioice skips loopback when it
    gathers, and has no setting for the interfaces).

    The replacement stays while any caller needs it; the newest caller's
    addresses apply.  An empty tuple changes nothing.

    @return: a function that undoes this call.
    @raise ValueError: an address is not an IP address.
    """
    global _originalHostAddresses
    if not addresses:
        return lambda: None
    for address in addresses:
        ipaddress.ip_address(address)
    if aioice.ice.get_host_addresses is not _hostAddresses:
        _originalHostAddresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _hostAddresses
    entry = tuple(addresses)
    _hostStack.append(entry)
    done = []

    def uninstall() -> None:
        if done:
            return
        done.append(True)
        _hostStack.remove(entry)
        if not _hostStack and aioice.ice.get_host_addresses is _hostAddresses:
            aioice.ice.get_host_addresses = _originalHostAddresses

    return uninstall


# -- ICE consent timing --------------------------------------------------------------

#: ICE consent freshness (RFC 7675, docs/operations.md "A member whose network
#: goes away"): a check every CONSENT_INTERVAL x (0.8 to 1.2) seconds, each
#: waiting 0.5 s for its answer; CONSENT_FAILURES unanswered in a row end the
#: peer connection.  At most 5 x (4.8 + 0.5) = 26.5 s after the last answer,
#: within RFC 7675's 30 s; aioice's own 5 s x 6 took 32 s in tests.test_netbed.
CONSENT_INTERVAL = 4.0
CONSENT_FAILURES = 5


def installConsentTiming() -> None:
    """
    Set aioice's consent timing: module globals that
    C{aioice.ice.Connection.query_consent} reads on every round.  For the
    whole process, idempotent.
    """
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES


# -- the zero-copy send path -----------------------------------------------------


def zeroCopySender(protect: Callable, sendto: Callable) -> tuple | None:
    """
    The parts of a zero-copy send path for one output, or C{None} when
    C{protect} is not a pylibsrtp C{Session.protect} or C{sendto} not an
    asyncio datagram transport's (then the generic path is used).

    The generic path copies each packet into a C{bytearray}, rewrites it,
    copies it to C{bytes}; pylibsrtp copies it into its C buffer, allocates
    an C{int *}, protects and copies the result out; asyncio's C{sendto}
    checks its state in Python.  The zero-copy path writes the packet
    straight into the session's own C buffer (C{Session._cdata}), rewrites
    it there, calls C{srtp_protect} on C{Session._srtp[0]} with a length
    pointer allocated once, and hands a C{memoryview} of the result to the
    socket (the asyncio transport's C{_sock}).  The buffer is the one
    pylibsrtp uses for every C{protect} of that session, so nothing else may
    protect on the session between the write and the C{sendto} (nothing
    can: one thread, no await).  A full socket buffer raises
    C{BlockingIOError} and the packet is dropped instead of queued.  On the
    one UDP port (a L{MuxTransport} with a C{batch}) the copy is queued
    for C{sendmmsg} instead: moved into the batch's own buffer, sent at the
    end of the read (L{ahoyconference.media.mmsg.SendBatch}).

    @return: C{(srtp, cdata, view, lenPointer, socketSendto)}.
    """
    session = getattr(protect, "__self__", None)
    transport = getattr(sendto, "__self__", None)
    sock = getattr(transport, "_sock", None)
    if (_SrtpSession is None or not isinstance(session, _SrtpSession) or sock is None
            or getattr(protect, "__func__", None) is not _SrtpSession.protect):
        return None
    cdata = session._cdata
    batch = getattr(transport, "batch", None)  # the one UDP port's sendmmsg (media/mmsg.py)
    send = batch.sender(cdata) if batch is not None else sock.sendto
    return (session._srtp[0], cdata, memoryview(_ffi.buffer(cdata)), _ffi.new("int *"), send)


# -- the start-up check ----------------------------------------------------------


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as e:
        raise HookMismatch(f"cannot read the source of {obj.__qualname__} ({e})") from None


def _need(text: str, where, what: str) -> None:
    if text not in _source(where):
        raise HookMismatch(f"{where.__module__}.{where.__qualname__} no longer contains "
                           f"{what!r}")


def _checkSources() -> None:
    _need("RTCCertificate.generateCertificate()", RTCPeerConnection.__init__,
          "RTCCertificate.generateCertificate()")
    create = getattr(RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport", None)
    if create is None:
        raise HookMismatch("RTCPeerConnection.__createDtlsTransport is gone")
    _need("RTCDtlsTransport(iceTransport, self.__certificates)", create,
          "RTCDtlsTransport(iceTransport, self.__certificates)")
    if not hasattr(aiortc.rtcpeerconnection, "RTCCertificate"):
        raise HookMismatch("aiortc.rtcpeerconnection no longer imports RTCCertificate")
    _need("self._ssrc = ", RTCRtpSender.__init__, "self._ssrc = ")
    _need("self._rtx_ssrc = ", RTCRtpSender.__init__, "self._rtx_ssrc = ")
    _need("RtcpSrPacket(", RTCRtpSender._run_rtcp, "RtcpSrPacket(")
    _need("await self._send_rtcp(packets)", RTCRtpSender._run_rtcp,
          "await self._send_rtcp(packets)")
    recv = RTCDtlsTransport._recv_next
    for text in ("self._rx_srtp.unprotect(data)", "await self._handle_rtp_data(data",
                 "await self._handle_rtcp_data(data)", "self.transport._recv()"):
        _need(text, recv, text)
    for text in ("self._rx_srtp = Session(", "self._tx_srtp = Session("):
        _need(text, RTCDtlsTransport._setup_srtp, text)
    _need("self.receiver.data_received(data", aioice.ice.StunProtocol.datagram_received,
          "self.receiver.data_received(data")
    _need("self._queue.put_nowait((data, component))", aioice.ice.Connection.data_received,
          "self._queue.put_nowait((data, component))")
    _need("get_host_addresses(", aioice.ice.Connection.gather_candidates,
          "get_host_addresses(")
    for text in ("self._nominated", "self._protocols"):
        _need(text, aioice.ice.Connection.__init__, text)
    parameters = list(inspect.signature(aioice.ice.get_host_addresses).parameters)
    if parameters != ["use_ipv4", "use_ipv6"]:
        raise HookMismatch(f"aioice.ice.get_host_addresses takes {parameters}, "
                           "not [use_ipv4, use_ipv6]")
    parameters = list(inspect.signature(aioice.ice.Connection.request_received).parameters)
    if parameters[:3] != ["self", "message", "addr"]:
        raise HookMismatch(f"aioice.ice.Connection.request_received takes {parameters}")
    if not callable(isCodecCompatible) or not callable(isRtx):
        raise HookMismatch("aiortc's is_codec_compatible/is_rtx are gone")
    _checkShared()
    for text in ("await asyncio.sleep(CONSENT_INTERVAL *", "if failures >= CONSENT_FAILURES:"):
        _need(text, aioice.ice.Connection.query_consent, text)


def _checkShared() -> None:
    """What L{gatherOnShared} relies on."""
    gather = aioice.ice.Connection.get_component_candidates
    parameters = list(inspect.signature(gather).parameters)
    if parameters != ["self", "component", "addresses", "timeout"]:
        raise HookMismatch(f"aioice.ice.Connection.get_component_candidates takes {parameters}")
    for text in ("StunProtocol(self)", "self._protocols += host_protocols",
                 "server_reflexive_candidate(protocol, self.stun_server)",
                 "if self.turn_server:"):
        _need(text, gather, text)
    _need("self._local_username = local_username", aioice.ice.Connection.__init__,
          "self._local_username = local_username")
    _need("return self._local_username", aioice.ice.Connection.local_username.fget,
          "return self._local_username")
    _need("self.transport = ", aioice.ice.StunProtocol.connection_made, "self.transport = ")
    _need("get_component_candidates(component=component, addresses=addresses)",
          aioice.ice.Connection.gather_candidates,
          "get_component_candidates(component=component, addresses=addresses)")
    parameters = list(inspect.signature(aioice.ice.server_reflexive_candidate).parameters)
    if parameters[:2] != ["protocol", "stun_server"]:
        raise HookMismatch(f"aioice.ice.server_reflexive_candidate takes {parameters}")


def _checkSrtp() -> None:
    import asyncio.selector_events
    import os

    from pylibsrtp import Policy

    if _SrtpSession is None or srtpProtectInPlace is None:
        raise HookMismatch("pylibsrtp._binding (ffi, lib.srtp_protect) is gone")
    for name in ("protect", "unprotect", "protect_rtcp", "remove_stream"):
        if not callable(getattr(_SrtpSession, name, None)):
            raise HookMismatch(f"pylibsrtp.Session.{name} is gone")
    session = _SrtpSession(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    cdata = getattr(session, "_cdata", None)
    srtp = getattr(session, "_srtp", None)
    if cdata is None or srtp is None:
        raise HookMismatch("pylibsrtp.Session has no _cdata/_srtp")
    size = len(_ffi.buffer(cdata))
    if size < SRTP_BUFFER:
        raise HookMismatch(f"pylibsrtp.Session's buffer is {size} bytes, not {SRTP_BUFFER}")
    _need("self._sock = sock", asyncio.selector_events._SelectorTransport.__init__,
          "self._sock = sock")


_checked: list[bool] = []


def checkHooks() -> None:
    """
    Check that every hook above still fits the installed libraries: the
    call sites they replace, the attributes they read, the signatures of
    what they wrap, the size of pylibsrtp's buffer.  Checked once per
    process (a few milliseconds); the engine calls it when it is made.

    @raise HookMismatch: with one line naming what moved.
    """
    if _checked:
        return
    _checkSources()
    _checkSrtp()
    _checked.append(True)
