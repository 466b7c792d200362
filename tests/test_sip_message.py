"""Parsing and serialising SIP messages, SDP offers and G.711 (ahoyconference.sip)."""

from __future__ import annotations

import hashlib
import math

from twisted.trial.unittest import TestCase

from ahoyconference.sip import g711
from ahoyconference.sip.auth import NONCE_LIFETIME, DigestAuth, parseAuthorization
from ahoyconference.sip.message import (
    NameAddr,
    SipParseError,
    SipUri,
    StreamFramer,
    parse,
    response,
    splitList,
    stampVia,
)
from ahoyconference.sip.sdp import SdpError, makeAnswer, parseOffer

INVITE = (
    b"INVITE sip:room@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1;rport\r\n"
    b"v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK0\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "Bob, the \\"Phone\\"" <sip:bob@10.0.0.1>;tag=abc\r\n'
    b"To: <sip:room@127.0.0.1>\r\n"
    b"i: call-1@10.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:bob@10.0.0.1:5062>\r\n"
    b"Record-Route: <sip:pbx1;lr>, <sip:pbx2;lr>\r\n"
    b"Subject: a long\r\n  folded line\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\nv=0\nEXTRA"
)

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 9 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


class MessageTests(TestCase):
    """L{parse}, L{StreamFramer}, L{response}."""

    def test_parseRequest(self):
        """Compact names expanded, folded lines joined, the body cut at Content-Length."""
        msg = parse(INVITE)
        self.assertEqual((msg.method, msg.uri), ("INVITE", "sip:room@127.0.0.1:5060"))
        self.assertEqual(len(msg.getAll("Via")), 2)
        self.assertEqual(msg.get("call-id"), "call-1@10.0.0.1")
        self.assertEqual(msg.get("Subject"), "a long folded line")
        self.assertEqual(msg.body, b"v=0\n")
        self.assertEqual(msg.cseq(), (1, "INVITE"))
        self.assertEqual(msg.getAll("Record-Route"), ["<sip:pbx1;lr>", "<sip:pbx2;lr>"])
        via = msg.topVia()
        self.assertEqual((via["transport"], via["host"], via["port"]), ("UDP", "10.0.0.1", 5062))
        self.assertEqual(via["params"], {"branch": "z9hG4bK1", "rport": ""})
        caller = NameAddr.parse(msg.get("From"))
        self.assertEqual(caller.display, 'Bob, the "Phone"')
        self.assertEqual(caller.params["tag"], "abc")
        self.assertEqual(SipUri.parse(caller.uri).user, "bob")

    def test_bad(self):
        """Junk, a missing header, a bad CSeq, a short body: L{SipParseError}."""
        for data in (b"hello", b"INVITE x SIP/2.0\r\n\r\n",
                     INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"),
                     INVITE.replace(b"Content-Length: 4", b"Content-Length: 400"),
                     b"FOO sip:x SIP/3.0\r\nVia: x\r\n\r\n", b"\xff\xfe\r\n\r\n"):
            self.assertRaises(SipParseError, parse, data)

    def test_response(self):
        """A response copies Via, From, Call-ID, CSeq; adds our tag; copies Record-Route on 2xx."""
        msg = parse(INVITE)
        ok = parse(response(msg, 200, toTag="xyz", body=b"v=0\r\n").toBytes())
        self.assertEqual(ok.status, 200)
        self.assertEqual(ok.getAll("Via"), msg.getAll("Via"))
        self.assertEqual(NameAddr.parse(ok.get("To")).params["tag"], "xyz")
        self.assertEqual(ok.getAll("Record-Route"), msg.getAll("Record-Route"))
        self.assertEqual(ok.get("Content-Length"), "5")
        busy = parse(response(msg, 486).toBytes())
        self.assertEqual((busy.status, busy.reason), (486, "Busy Here"))
        self.assertEqual(busy.getAll("Record-Route"), [])

    def test_stampVia(self):
        """The top Via gets rport's value and, when the host differs, received=."""
        msg = parse(INVITE)
        stampVia(msg, "192.0.2.7", 40000)
        vias = msg.getAll("Via")
        self.assertEqual(vias[0], "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1;rport=40000"
                                  ";received=192.0.2.7")
        self.assertEqual(vias[1], "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK0")
        same = parse(INVITE.replace(b";rport", b""))
        stampVia(same, "10.0.0.1", 5062)
        self.assertEqual(same.getAll("Via")[0], "SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK1")

    def test_framer(self):
        """A TCP stream cut into messages in any pieces; keep-alive CRLFs skipped."""
        out = []
        framer = StreamFramer(out.append)
        stream = b"\r\n\r\n" + INVITE[:-5] + INVITE
        for i in range(0, len(stream), 7):
            framer.feed(stream[i:i + 7])
        self.assertEqual(len(out), 2)
        self.assertEqual(parse(out[0]).body, b"v=0\n")
        self.assertRaises(SipParseError, StreamFramer(out.append).feed, b"X\r\n\r\n")

    def test_splitList(self):
        """Commas inside quotes and angle brackets do not split."""
        self.assertEqual(splitList('"a, b" <sip:x,y>, <sip:z>'), ['"a, b" <sip:x,y>', "<sip:z>"])


class SdpTests(TestCase):
    """Offers read and answered (RFC 3264)."""

    def test_offer(self):
        """The first codec we take in the offer's order; its telephone-event type."""
        offer = parseOffer(OFFER)
        self.assertEqual((offer.address, offer.port, offer.codec, offer.pt, offer.dtmfPT),
                         ("10.0.0.1", 4000, "PCMA", 8, 101))
        self.assertFalse(offer.hold)
        answer = makeAnswer(offer, "127.0.0.1", 20000, 5, 1)
        self.assertIn("m=audio 20000 RTP/AVP 8 101\r\n", answer)
        self.assertIn("a=rtpmap:101 telephone-event/8000", answer)
        self.assertIn("a=sendrecv", answer)

    def test_opusAndPreference(self):
        """Opus when the phone puts it first; a re-INVITE keeps the call's codec if offered."""
        opus = OFFER.replace("9 8 0 101", "111 0 101").replace(
            "a=rtpmap:101", "a=rtpmap:111 opus/48000/2\r\na=rtpmap:101")
        offer = parseOffer(opus)
        self.assertEqual((offer.codec, offer.pt), ("OPUS", 111))
        self.assertIn("a=rtpmap:111 opus/48000/2", makeAnswer(offer, "127.0.0.1", 2, 5, 1))
        self.assertEqual(parseOffer(opus, prefer="PCMU").codec, "PCMU")
        self.assertEqual(parseOffer(OFFER, prefer="OPUS").codec, "PCMA")

    def test_hold(self):
        """sendonly is answered recvonly; c=0.0.0.0 (old hold) inactive."""
        offer = parseOffer(OFFER.replace("a=sendrecv", "a=sendonly"))
        self.assertTrue(offer.hold)
        self.assertIn("a=recvonly", makeAnswer(offer, "127.0.0.1", 20000, 5, 2))
        old = parseOffer(OFFER.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0"))
        self.assertIn("a=inactive", makeAnswer(old, "127.0.0.1", 20000, 5, 2))

    def test_refused(self):
        """No audio, no codec we take, no address: L{SdpError} (488)."""
        self.assertRaises(SdpError, parseOffer, "v=0\r\nm=video 4 RTP/AVP 96\r\n")
        self.assertRaises(SdpError, parseOffer, OFFER.replace("9 8 0 101", "9 101"))
        self.assertRaises(SdpError, parseOffer, OFFER.replace("c=IN IP4 10.0.0.1\r\n", ""))


class G711Tests(TestCase):
    """The codec tables."""

    def test_roundTrip(self):
        """Encoding then decoding stays within G.711's step size; known code points."""
        samples = [int(20000 * math.sin(i / 7)) for i in range(800)]
        for codec in ("PCMU", "PCMA"):
            decoded = g711.decode(codec, g711.encode(codec, samples))
            for a, b in zip(samples, decoded, strict=True):
                self.assertLessEqual(abs(a - b), max(16, abs(a) // 16), (codec, a, b))
        self.assertEqual(list(g711.decode("PCMU", b"\xff\x80\x00")), [0, 32124, -32124])
        self.assertEqual(list(g711.decode("PCMA", b"\xd5\x55")), [8, -8])

    def test_level(self):
        """The RFC 6464 level: a full-scale sine about 3 dB, silence 127."""
        full = [int(32767 * math.sin(i / 5)) for i in range(160)]
        self.assertIn(g711.levelOf(full), (3, 4))
        self.assertEqual(g711.levelOf([0] * 160), 127)


class DigestTests(TestCase):
    """L{DigestAuth}: RFC 2617 digests computed by hand here."""

    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.clock.advance(1000)
        self.auth = DigestAuth("pbx", "s3cret", self.clock)

    def answer(self, password="s3cret", qop=True, uri="sip:room@127.0.0.1", nonce=None,
               username="pbx"):
        fields = parseAuthorization(self.auth.challenge())
        self.assertEqual((fields["realm"], fields["qop"], fields["algorithm"]),
                         ("ahoyconference", "auth", "MD5"))
        nonce = nonce or fields["nonce"]
        ha1 = hashlib.md5(f"{username}:ahoyconference:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"INVITE:{uri}".encode()).hexdigest()
        if qop:
            response = hashlib.md5(f"{ha1}:{nonce}:00000001:abc:auth:{ha2}".encode()).hexdigest()
            return (f'Digest username="{username}", realm="ahoyconference", nonce="{nonce}", '
                    f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, '
                    f'nc=00000001, cnonce="abc"')
        response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        return (f'Digest username="{username}", realm="ahoyconference", nonce="{nonce}", '
                f'uri="{uri}", response="{response}"')

    def test_right(self):
        self.assertEqual(self.auth.check("INVITE", self.answer()), "ok")
        self.assertEqual(self.auth.check("INVITE", self.answer(qop=False)), "ok")

    def test_wrong(self):
        self.assertEqual(self.auth.check("INVITE", None), "missing")
        self.assertEqual(self.auth.check("INVITE", self.answer(password="x")), "wrong")
        self.assertEqual(self.auth.check("INVITE", self.answer(username="eve")), "wrong")
        self.assertEqual(self.auth.check("INVITE", self.answer(nonce="5.forged")), "wrong")
        self.assertEqual(self.auth.check("BYE", self.answer()), "wrong")  # another method
        self.assertEqual(self.auth.check("INVITE", "Basic cGJ4OnMzY3JldA=="), "wrong")

    def test_stale(self):
        header = self.answer()
        self.clock.advance(NONCE_LIFETIME + 1)
        self.assertEqual(self.auth.check("INVITE", header), "stale")
        self.assertIn("stale=true", self.auth.challenge(stale=True))
