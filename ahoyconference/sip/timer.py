# -*- test-case-name: tests.test_sip_gateway -*-
"""
Session timers (RFC 4028): what we answer to a request's C{Session-Expires},
and the re-INVITE with which we refresh when the caller asks us to.
"""

from __future__ import annotations

from ahoyconference.sip.message import Message, SipParseError


class IntervalTooSmall(Exception):
    """The asked interval is below our Min-SE (answer 422)."""


def negotiate(msg: Message, default: int, minimum: int) -> tuple[int, str]:
    """
    The interval and refresher to answer a request with: the caller's
    interval (or C{default} when it supports timers and asks none; 0, no
    timer, when it does not support them), C{refresher=uac} unless it asks
    C{uas} or cannot refresh itself (RFC 4028 9).

    @raise IntervalTooSmall: below C{minimum}.
    @raise SipParseError: an unreadable C{Session-Expires}.
    """
    supported = {s.lower() for s in msg.getAll("Supported")}
    value = msg.get("Session-Expires")
    if value is None:
        return (default, "uac") if "timer" in supported else (0, "uac")
    head, _, params = value.partition(";")
    if not head.strip().isdigit():
        raise SipParseError("bad Session-Expires")
    interval = int(head.strip())
    if interval < minimum:
        raise IntervalTooSmall(interval)
    refresher = "uas" if "refresher=uas" in params.replace(" ", "").lower() else "uac"
    if "timer" not in supported:
        refresher = "uas"
    return interval, refresher


def refresh(transactions, call) -> None:
    """We are the refresher: a re-INVITE with our last SDP, ACKed when answered."""
    if call.state == "ended":
        return
    extra = [["Supported", "timer"], ["Content-Type", "application/sdp"],
             ["Session-Expires", f"{call.interval};refresher=uas"]]
    request = call.dialog.request("INVITE", body=call.answer.encode(), extra=extra)
    cseq = call.dialog.localSeq
    d = transactions.send(request, call.dialog.origin)

    def done(resp):
        if resp is None or call.state == "ended":
            return
        if 200 <= resp.status < 300:
            transactions.send(call.dialog.ack(cseq), call.dialog.origin)
        elif resp.status in (408, 481):  # the call is gone (RFC 4028 10)
            call.hangup(f"refresh failed ({resp.status})")
            return
        call.setSessionTimer(call.interval, "uas")

    d.addCallback(done)
