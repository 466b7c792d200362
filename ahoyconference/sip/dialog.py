# -*- test-case-name: tests.test_sip_transaction -*-
"""
A dialog made by an INVITE we answered (RFC 3261 12.1.1): its identifiers,
the remote target and route set, the sequence numbers, and the requests we
send in it (BYE, re-INVITE for a session refresh).
"""

from __future__ import annotations

from ahoyconference.sip.message import Message, NameAddr, SipParseError, newTag
from ahoyconference.sip.transport import Origin


class Dialog:
    """
    The UAS side of one dialog.

    @ivar origin: where the INVITE came from; our requests go back that way
        (the same TCP connection, or the address the INVITE came from over
        UDP: a PBX behind NAT answers there, RFC 3581).
    """

    def __init__(self, invite: Message, origin: Origin):
        self.callID = invite.get("Call-ID")
        self.localTag = newTag()
        remote = NameAddr.parse(invite.get("From"))
        self.remoteTag = remote.params.get("tag", "")
        self.remoteUri = invite.get("From")
        local = NameAddr.parse(invite.get("To"))
        local.params["tag"] = self.localTag
        self.localUri = str(local)
        contact = invite.get("Contact")
        if not contact:
            raise SipParseError("INVITE without Contact")
        self.remoteTarget = NameAddr.parse(contact).uri
        self.routeSet = invite.getAll("Record-Route")  # UAS: in the order received
        self.remoteSeq = invite.cseq()[0]
        self.localSeq = 1
        self.origin = origin

    def matches(self, msg: Message) -> bool:
        """Is this request part of the dialog (Call-ID and tags)?"""
        if msg.get("Call-ID") != self.callID:
            return False
        fromTag = NameAddr.parse(msg.get("From")).params.get("tag", "")
        toTag = NameAddr.parse(msg.get("To")).params.get("tag", "")
        return fromTag == self.remoteTag and toTag == self.localTag

    def checkSequence(self, msg: Message) -> bool:
        """An in-dialog request must have a higher CSeq (RFC 3261 12.2.2)."""
        seq = msg.cseq()[0]
        if seq <= self.remoteSeq:
            return False
        self.remoteSeq = seq
        return True

    def contact(self) -> str:
        """Our Contact: the address the peer reached us on."""
        host, port = self.origin.local
        transport = ";transport=tcp" if self.origin.transport == "TCP" else ""
        return f"<sip:{host}:{port}{transport}>"

    def request(self, method: str, body: bytes = b"", extra=()) -> Message:
        """A new in-dialog request of ours (RFC 3261 12.2.1.1)."""
        self.localSeq += 1
        headers = [["Max-Forwards", "70"], ["From", self.localUri], ["To", self.remoteUri],
                   ["Call-ID", self.callID], ["CSeq", f"{self.localSeq} {method}"]]
        headers.extend(["Route", r] for r in self.routeSet)
        headers.append(["Contact", self.contact()])
        headers.extend([list(h) for h in extra])
        return Message(method=method, uri=self.remoteTarget, headers=headers, body=body)

    def ack(self, cseq: int) -> Message:
        """The ACK for a 2xx to our re-INVITE (a transaction of its own)."""
        msg = self.request("ACK")
        self.localSeq -= 1
        msg.set("CSeq", f"{cseq} ACK")
        return msg
