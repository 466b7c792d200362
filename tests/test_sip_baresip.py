# -*- test-case-name: tests.test_sip_baresip -*-
"""
Telephones in the room, with a real SIP phone: Debian's C{baresip}
(L{tests.sipphone}), headless, dialling the server on 127.0.0.1.  Its
microphone plays a 700 Hz tone; an aiortc member publishes 440 Hz; the
phone must hear 440 Hz and the member must receive 700 Hz (docs/sip.md).

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import random
from array import array

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from ahoyconference.config import SipSettings
from ahoyconference.sip.gateway import SipGateway
from tests.helpers import Server, asyncTest, createAndJoin
from tests.mediaclients import Publisher, Subscriber, toneFrequency, waitFor
from tests.sipphone import BARESIP, Baresip
from tests.test_media_engine import loopbackOnly

PHONE_TONE = 700.0
MEMBER_TONE = 440.0


class PhoneTests(TestCase):
    """A baresip phone dials into conferences."""

    timeout = 120

    def setUp(self):
        if BARESIP is None:
            raise SkipTest("baresip is not installed (apt-get install baresip-core)")
        loopbackOnly(self)

    async def _server(self, transport: str = "udp", **auth) -> tuple[Server, SipGateway]:
        server = await Server(engine="aiortc").start()
        base = random.randrange(40000, 49000, 2)
        settings = SipSettings(listen=(f"{transport}:127.0.0.1:0",), peers=("127.0.0.1/32",),
                               rtp_ports=(base, base + 60), **auth)
        gateway = SipGateway(server.service, settings, server.reactor)
        server.service.sip = gateway
        gateway.startService()
        self.peers = []

        async def cleanup():
            for peer in self.peers:
                await peer.close()
            await defer.Deferred.asFuture(defer.maybeDeferred(gateway.stopService),
                                          asyncio.get_event_loop())
            await server.stop()

        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))
        return server, gateway

    async def _phone(self, gateway, **kwargs) -> Baresip:
        transport = gateway.addresses()[0][0]
        phone = await Baresip(transport=transport, **kwargs).start()
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(phone.stop())))
        return phone

    def _uri(self, gateway, conferenceID: str) -> str:
        transport, address, port = gateway.addresses()[0]
        return f"sip:{conferenceID}@{address}:{port};transport={transport}"

    async def _share(self, client) -> Publisher:
        response = await client.request("MEDIA_SHARE_request", audio=True, video=False,
                                        maxVideoBitrate=300)
        self.assertEqual(response["status"], 200)
        offer = await client.expect("MEDIA_RECEIVE_request")
        publisher = Publisher(tag=1, audio=True, video=False)
        publisher.audio.frequency = MEMBER_TONE
        self.peers.append(publisher)
        await client.send({"messageType": "MEDIA_RECEIVE_response", "status": 200,
                           "sdp": await publisher.answer(offer["sdp"]),
                           "transactionID": offer["transactionID"]})
        return publisher

    async def _subscribe(self, client, memberID: str) -> tuple[Subscriber, str]:
        response = await client.request("MEDIA_request", members=[
            {"memberID": memberID, "audio": True, "video": False}])
        self.assertEqual(response["status"], 200)
        request = await client.expect("SDP_request", transactionID=memberID)
        subscriber = Subscriber()
        self.peers.append(subscriber)
        await client.send({"messageType": "SDP_response", "status": 200,
                           "sdp": await subscriber.answer(request["sdp"]),
                           "transactionID": memberID})
        return subscriber, request["sdp"]

    async def _phoneJoined(self, client) -> dict:
        while True:
            indication = await client.expect("CONFERENCE_JOIN_indication", timeout=20)
            if not indication["member"]["webrtc"]:
                return indication["member"]

    @asyncTest
    async def test_dialInHearAndBeHeard(self):
        """
        The phone dials in with the PIN; it is a member with C{webrtc:
        false}, named from its caller ID; it hears the member's tone, the
        member (subscribed to it, in G.711 as the phone sent it) hears the
        phone's; it speaks; a moderator mutes it; it hangs up.
        """
        server, gateway = await self._server()
        alice, _ = await createAndJoin(server.url, "room", "alice", joinPassword="4321",
                                       password="4321")
        await self._share(alice)
        phone = await self._phone(gateway, name="Bob Phone")
        phone.dial(self._uri(gateway, "room"))
        await phone.waitOutput("Call established")
        await asyncio.sleep(1.5)  # the "enter PIN" prompt
        await phone.keys("4321#")
        member = await self._phoneJoined(alice)
        self.assertEqual(member["name"], "Bob Phone")
        self.assertFalse(member["webrtc"])
        self.assertFalse(member["video"]["available"])
        self.assertFalse(member["moderator"])
        self.assertTrue(member["speaker"])
        phoneID = member["memberID"]
        while True:
            indication = await alice.expect("MEDIA_indication", timeout=20)
            if indication["member"]["memberID"] == phoneID and indication["audio"]["available"]:
                break
        subscriber, offer = await self._subscribe(alice, phoneID)
        self.assertIn("PCMU/8000", offer)
        self.assertNotIn("opus", offer.lower())
        await waitFor(lambda: len(subscriber.audio) >= 100, what="the phone's tone at Alice")
        samples = array("h")
        for chunk in subscriber.audio[-50:]:
            samples.extend(chunk)
        frequency, rms = toneFrequency(samples, 8000)
        self.assertTrue(abs(frequency - PHONE_TONE) < 20 and rms > 1000, (frequency, rms))
        while True:  # the phone speaks (its level, from its G.711)
            event = await alice.expect("MEDIA_event", timeout=20)
            if event["member"]["memberID"] == phoneID and event["event"] == "start_speaking":
                break

        # the phone hears Alice's tone (from its own decoder's dump)
        await asyncio.sleep(3)
        heard, rate = phone.heard()
        last = heard[-rate:]
        frequency, rms = toneFrequency(last, rate)
        self.assertTrue(abs(frequency - MEMBER_TONE) < 20 and rms > 500, (frequency, rms))

        # a moderator (Alice is not one: the room has a moderator password) ...
        response = await alice.request("MEDIA_MUTE_request", memberID=phoneID, audio=True)
        self.assertEqual(response["status"], 403)

        # the phone hangs up: CONFERENCE_LEAVE_indication
        phone.hangup()
        leave = await alice.expect("CONFERENCE_LEAVE_indication", timeout=20)
        self.assertEqual(leave["member"]["memberID"], phoneID)
        await waitFor(lambda: not gateway.calls, what="the call gone")
        self.assertEqual(gateway.counters["calls"]["hung_up"], 1)
        await alice.close()

    @asyncTest
    async def test_moderatorMutesAndKicks(self):
        """
        A moderator mutes the phone (its audio stops reaching subscribers)
        and kicks it: the phone gets a BYE.
        """
        server, gateway = await self._server()
        alice, _ = await createAndJoin(server.url, "room", "alice", joinPassword="9999",
                                       password="1234", moderatorPassword="9999")
        phone = await self._phone(gateway, name="")
        phone.dial(self._uri(gateway, "room"))
        await phone.waitOutput("Call established")
        await phone.keys("1234#")
        member = await self._phoneJoined(alice)
        self.assertEqual(member["name"], "alice")  # no display name: the user part
        phoneID = member["memberID"]
        while True:
            indication = await alice.expect("MEDIA_indication", timeout=20)
            if indication["member"]["memberID"] == phoneID and indication["audio"]["available"]:
                break
        subscriber, _ = await self._subscribe(alice, phoneID)
        await waitFor(lambda: sum(subscriber.ssrcs.values()) >= 25, what="the phone's audio")

        response = await alice.request("MEDIA_MUTE_request", memberID=phoneID, audio=True)
        self.assertEqual(response["status"], 200)
        await asyncio.sleep(0.3)
        before = sum(subscriber.ssrcs.values())
        await asyncio.sleep(1.0)
        self.assertEqual(sum(subscriber.ssrcs.values()), before)

        response = await alice.request("CONFERENCE_KICK_request", memberID=phoneID)
        self.assertEqual(response["status"], 200)
        await phone.waitOutput("terminated")
        await waitFor(lambda: not gateway.calls, what="the call gone")
        self.assertEqual(gateway.counters["calls"]["bye_sent"], 1)
        await alice.close()

    @asyncTest
    async def test_wrongPinThreeTimes(self):
        """Three wrong PINs: a "wrong" tone each time, then a BYE."""
        server, gateway = await self._server()
        alice, _ = await createAndJoin(server.url, "room", "alice", joinPassword="1234",
                                       password="1234")
        phone = await self._phone(gateway)
        phone.dial(self._uri(gateway, "room"))
        await phone.waitOutput("Call established")
        for pin in ("1111#", "2222#", "3333#"):
            await phone.keys(pin, gap=0.2)
            await asyncio.sleep(0.5)
        await phone.waitOutput("terminated")
        await waitFor(lambda: not gateway.calls, what="the call gone")
        self.assertEqual(gateway.counters["pin_failures"]["total"], 3)
        self.assertEqual(gateway.counters["refused"][403], 3)
        self.assertEqual(len(server.service.members), 1)
        await alice.close()

    @asyncTest
    async def test_unknownConference(self):
        """A call to a conference that does not exist: 404."""
        server, gateway = await self._server()
        phone = await self._phone(gateway)
        phone.dial(self._uri(gateway, "nosuchroom"))
        await phone.waitOutput("404 Not Found")
        self.assertEqual(gateway.counters["refused"][404], 1)
        self.assertFalse(gateway.calls)

    @asyncTest
    async def test_tcpWithoutPin(self):
        """Over TCP, into a room without passwords: joined at once, as a moderator."""
        server, gateway = await self._server("tcp")
        alice, _ = await createAndJoin(server.url, "open", "alice")
        phone = await self._phone(gateway)
        phone.dial(self._uri(gateway, "open"))
        member = await self._phoneJoined(alice)
        self.assertTrue(member["moderator"])
        await phone.waitOutput("Call established")
        phone.hangup()
        leave = await alice.expect("CONFERENCE_LEAVE_indication", timeout=20)
        self.assertEqual(leave["member"]["memberID"], member["memberID"])
        await alice.close()

    @asyncTest
    async def test_twoPhones(self):
        """Two phones in one room hear each other (the mix of another phone's G.711)."""
        server, gateway = await self._server()
        alice, _ = await createAndJoin(server.url, "open", "alice")
        first = await self._phone(gateway, name="First", user="first", tone=700.0)
        second = await self._phone(gateway, name="Second", user="second", tone=1000.0)
        first.dial(self._uri(gateway, "open"))
        await self._phoneJoined(alice)
        second.dial(self._uri(gateway, "open"))
        await self._phoneJoined(alice)
        await asyncio.sleep(3)
        for phone, expected in ((first, 1000.0), (second, 700.0)):
            heard, rate = phone.heard()
            frequency, rms = toneFrequency(heard[-rate:], rate)
            self.assertTrue(abs(frequency - expected) < 20 and rms > 500, (frequency, rms))
        await alice.close()

    @asyncTest
    async def test_digestAuthentication(self):
        """With [sip] auth_*, the phone answers the 401 and joins; a wrong password gets 403."""
        server, gateway = await self._server(auth_username="alice", auth_password="s3cret")
        alice, _ = await createAndJoin(server.url, "open", "alice")
        good = await self._phone(gateway, user="alice", password="s3cret")
        good.dial(self._uri(gateway, "open"))
        await self._phoneJoined(alice)
        self.assertEqual(gateway.counters["auth"]["missing"], 1)
        self.assertEqual(gateway.counters["auth"]["ok"], 1)
        bad = await self._phone(gateway, user="alice", password="guess")
        bad.dial(self._uri(gateway, "open"))
        await bad.waitOutput("403 Forbidden")
        self.assertEqual(gateway.counters["auth"]["wrong"], 1)
        await alice.close()

    @asyncTest
    async def test_opusPhone(self):
        """
        A phone that offers Opus first: browsers get its Opus as it came,
        and it hears the member in Opus.
        """
        server, gateway = await self._server()
        alice, _ = await createAndJoin(server.url, "open", "alice")
        await self._share(alice)
        phone = await self._phone(gateway, codec="opus")
        phone.dial(self._uri(gateway, "open"))
        member = await self._phoneJoined(alice)
        phoneID = member["memberID"]
        while True:
            indication = await alice.expect("MEDIA_indication", timeout=20)
            if indication["member"]["memberID"] == phoneID and indication["audio"]["available"]:
                break
        subscriber, offer = await self._subscribe(alice, phoneID)
        self.assertIn("opus/48000", offer)
        self.assertNotIn("PCMU", offer)
        await waitFor(lambda: len(subscriber.audio) >= 100, what="the phone's tone at Alice")
        samples = array("h")
        for chunk in subscriber.audio[-50:]:
            samples.extend(chunk)
        frequency, rms = toneFrequency(samples, 48000)
        self.assertTrue(abs(frequency - PHONE_TONE) < 20 and rms > 1000, (frequency, rms))
        await asyncio.sleep(2)
        heard, rate = phone.heard()
        self.assertEqual(rate, 48000)
        frequency, rms = toneFrequency(heard[-rate:], rate)
        self.assertTrue(abs(frequency - MEMBER_TONE) < 20 and rms > 500, (frequency, rms))
        await alice.close()
