"""Receiving without decoding: the load's subscribers only count RTP packets.

Importing this module replaces aiortc's C{RTCRtpReceiver._handle_rtp_packet}
with a counting one (the load generator's process only); L{install_fast_rx}
counts straight from a connected peer connection's ICE sockets."""
from __future__ import annotations

import struct

import aiortc.rtcrtpreceiver as _rtcrtpreceiver
from aiortc import RTCPeerConnection

_RX = {"packets": 0}


async def _count_only_handle_rtp_packet(self, packet, arrival_time_ms):
    """Replacement for RTCRtpReceiver._handle_rtp_packet.

    Keeps per-SSRC StreamStatistics (so RTCP receiver reports and getStats()
    still work) and counts; skips REMB estimation, NACK generation,
    depacketizing, the jitter buffer and decoding."""
    if not self._enabled:
        return
    codec = self._RTCRtpReceiver__codecs.get(packet.payload_type)
    if codec is None:
        return
    streams = self._RTCRtpReceiver__remote_streams
    st = streams.get(packet.ssrc)
    if st is None:
        st = streams[packet.ssrc] = _rtcrtpreceiver.StreamStatistics(codec.clockRate)
        if not hasattr(self, "_bench_ssrc_kind"):
            self._bench_ssrc_kind = {}
        self._bench_ssrc_kind[packet.ssrc] = ("rtx" if codec.name.lower() == "rtx"
                                              else getattr(self, "_bench_kind", "?"))
    st.add(packet)
    _RX["packets"] += 1


_rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet = _count_only_handle_rtp_packet


class _SeqTs:
    """What StreamStatistics.add() reads of a packet."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self, seq: int, ts: int):
        self.sequence_number = seq
        self.timestamp = ts


_SEQ_TS_SSRC = struct.Struct("!HII").unpack_from
RX_FAST = {"srtp_errors": 0, "unknown_pt": 0}


RCVBUF_BYTES = 8 << 20


def _grow_rcvbuf(protocol) -> None:
    """A large receive buffer on a load-generator socket, so that a stall of
    the load generator's own loop (the machine is shared) does not drop
    packets in the kernel and count as the SFU's loss.  The SFU's sockets
    are left as the SFU made them."""
    import socket as _socket
    sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
    if sock is None:
        return
    try:
        sock.setsockopt(_socket.SOL_SOCKET, 33, RCVBUF_BYTES)   # SO_RCVBUFFORCE (root)
    except OSError:
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError:
            pass


def install_fast_rx(pc: RTCPeerConnection) -> bool:
    """Count a connected subscriber's RTP straight from its ICE sockets.

    The default path (aioice queue -> DTLS transport coroutine -> unprotect ->
    RtpPacket.parse -> router -> receiver coroutine) costs the load generator
    about as much per packet as the SFU spends forwarding it, and the load
    generator shares the machine.  This wraps the aioice socket protocol's
    datagram_received (as the SFU's engine does) and, per RTP datagram, only
    unprotects it, reads seq/timestamp/SSRC and updates the receiver's own
    StreamStatistics, so aiortc still sends the same RTCP receiver reports
    and the counters read the same.  RTCP, STUN and DTLS take the usual way.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        return False
    dtls = transceivers[0].receiver.transport
    srtp = getattr(dtls, "_rx_srtp", None)
    conn = getattr(getattr(dtls, "transport", None), "_connection", None)
    if srtp is None or conn is None:
        return False
    by_pt = {}
    for t in transceivers:
        for c in t._codecs:
            kind = "rtx" if c.mimeType.lower().endswith("/rtx") else t.kind
            by_pt[c.payloadType] = (t.receiver, kind, c.clockRate)
    unprotect = srtp.unprotect
    stats_cls = _rtcrtpreceiver.StreamStatistics

    def on_rtp(data: bytes) -> None:
        try:
            plain = unprotect(data)
        except Exception:
            RX_FAST["srtp_errors"] += 1
            return
        entry = by_pt.get(plain[1] & 0x7F)
        if entry is None:
            RX_FAST["unknown_pt"] += 1
            return
        receiver, kind, clock = entry
        seq, ts, ssrc = _SEQ_TS_SSRC(plain, 2)
        streams = receiver._RTCRtpReceiver__remote_streams
        st = streams.get(ssrc)
        if st is None:
            st = streams[ssrc] = stats_cls(clock)
            if not hasattr(receiver, "_bench_ssrc_kind"):
                receiver._bench_ssrc_kind = {}
            receiver._bench_ssrc_kind[ssrc] = kind
        st.add(_SeqTs(seq, ts))
        _RX["packets"] += 1

    for protocol in list(conn._protocols):
        _grow_rcvbuf(protocol)
        original = protocol.datagram_received

        def datagram_received(data, addr, _original=original):
            if 127 < data[0] < 192 and len(data) > 12 and not 191 < data[1] < 224:
                on_rtp(data)
            else:
                _original(data, addr)

        protocol.datagram_received = datagram_received
    return True


def receiver_counts(receiver) -> dict:
    """{ssrc: (kind, received, extended_highest_seq)} of one receiver."""
    out = {}
    for ssrc, st in receiver._RTCRtpReceiver__remote_streams.items():
        ext = st.cycles + (st.max_seq or 0)
        out[ssrc] = (getattr(receiver, "_bench_ssrc_kind", {}).get(ssrc, "?"), st.packets_received, ext)
    return out
