# -*- test-case-name: tests.test_client -*-
"""
A Python client of the conference protocol (docs/protocol.md): what a bot, a
recorder or a load test uses to talk to an AhoyConference server.

It runs on asyncio, speaks WebSocket with the C{websockets} library (a
second, independent implementation of the protocol's transport: the server
uses Autobahn) and media with aiortc.  docs/client.md shows a complete
example.

    client = await ProtocolClient.connect("ws://127.0.0.1:8080/")
    await client.create("room")
    joined = await client.join("room", "bot")
    publication = await client.publish([audioTrack, videoTrack])
    subscription = await client.subscribe(otherMemberID)
    async for message in client.events():
        ...

Two layers:

 - messages: L{ProtocolClient.request} sends a request with a fresh
   C{transactionID} and returns its response (or the C{ERROR_response} with
   that C{transactionID}) within a timeout; L{ProtocolClient.expect} returns
   the next received message of a type; L{ProtocolClient.events} iterates
   over what arrives (indications and the server's requests); callbacks
   registered with L{ProtocolClient.on} see every message as it arrives.
 - the conference: C{create}, C{join}, C{leave}, C{chat}, C{lock},
   C{kick}, C{mute}, C{describe} (they raise L{RequestFailed} for a status
   other than 200), and C{publish}/C{subscribe}, which do the offer/answer
   of protocol.md 1.3/3.1 and 1.4/3.2 with an aiortc peer connection.

Peer connections use the C{iceServers} of the join response, or none: aiortc
would otherwise use a public STUN server.

Over 400 lines on purpose: the client is one object a program holds, its
message layer and its conference methods share the reader and the pending
requests, and about a third of the lines are the API's docstrings.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

SUBPROTOCOL = "conference-protocol"
DEFAULT_TIMEOUT = 10.0
#: How many "302 moved" answers to a join (protocol.md 4.10, a cluster) are followed.
MAX_REDIRECTS = 3


class ProtocolClientError(Exception):
    """The base of this module's errors."""


class RequestFailed(ProtocolClientError):
    """
    A request was answered with a status other than 200.

    @ivar response: the whole response.
    """

    def __init__(self, response: dict):
        self.response = response
        super().__init__(f"{response.get('messageType')}: {response.get('status')} "
                         f"{response.get('reason')}")

    @property
    def status(self) -> int | None:
        """The response's status."""
        return self.response.get("status")


class ConnectionLost(ProtocolClientError):
    """The connection closed while waiting for a message."""


class NoMessage(ProtocolClientError, TimeoutError):
    """No matching message arrived within the timeout."""


def _matches(message: dict, messageType: str | None, match: dict) -> bool:
    return (messageType is None or message.get("messageType") == messageType) and all(
        message.get(k) == v for k, v in match.items())


class ProtocolClient:
    """
    One WebSocket connection to the server, i.e. at most one member.

    A reader task parses every frame.  A response to a pending L{request}
    goes to that request; every other message goes to the callbacks of
    L{on} and then, when C{keep(message)} is true, to the inbox that
    L{expect} and L{events} read.

    @ivar ws: the C{websockets} connection.
    @ivar inbox: received messages not taken yet, oldest first.
    @ivar counts: messages received, by C{messageType}.
    @ivar closed: a future with the close code, done when the connection is.
    @ivar memberID: ours, once L{join} succeeded.
    @ivar iceServers: the C{iceServers} of the join response (or C{[]}).
    @ivar timeout: the default of every wait, in seconds.
    @ivar errors: what went wrong on the reader's side (a frame that is not
        JSON, a callback that raised); the reader goes on.
    @ivar redirects: the URLs L{join} followed (a cluster's 302), in order.
    """

    def __init__(self, ws, timeout: float = DEFAULT_TIMEOUT,
                 keep: Callable[[dict], bool] | None = None):
        self.ws = ws
        self.timeout = timeout
        self.keep = keep
        self.inbox: list[dict] = []
        self.counts: Counter = Counter()
        self.errors: list[str] = []
        self.memberID: str | None = None
        self.iceServers: list[dict] = []
        self.redirects: list[str] = []
        self._options: dict = {"subprotocols": [SUBPROTOCOL], "max_size": 2**24}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()
        self._pending: dict[str, tuple[str, asyncio.Future]] = {}
        self._callbacks: dict[str | None, list[Callable[[dict], Any]]] = {}
        self._frameObservers: list[Callable[[str], Any]] = []
        self._arrived = asyncio.Event()
        loop = asyncio.get_event_loop()
        self.closed: asyncio.Future = loop.create_future()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                      keep: Callable[[dict], bool] | None = None, **options) -> ProtocolClient:
        """
        Open a connection offering the subprotocol.

        @param url: C{ws://} or C{wss://} (then C{ssl=} an C{SSLContext} to
            trust a private certificate).
        @param timeout: for the handshake, and the default of every wait.
        @param keep: which messages to keep for L{expect}/L{events} (default:
            all); a load test that only counts indications keeps none.
        @param options: passed to C{websockets.connect} (C{origin},
            C{ssl}, C{ping_interval}, C{max_queue}, ...).
        """
        import websockets

        options.setdefault("subprotocols", [SUBPROTOCOL])
        options.setdefault("max_size", 2**24)
        ws = await websockets.connect(url, open_timeout=timeout, **options)
        client = cls(ws, timeout, keep)
        client._options = options
        return client

    async def reconnect(self, url: str) -> None:
        """
        Close this connection and open one to C{url} with the same options
        (callbacks, observers and counts stay; what was not taken of the
        inbox is dropped).
        """
        import websockets

        await self.close()
        self.ws = await websockets.connect(url, open_timeout=self.timeout, **self._options)
        self.inbox.clear()
        self.memberID = None
        self.closed = asyncio.get_event_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    # -- receiving -----------------------------------------------------------

    def observeFrames(self, observer: Callable[[str], Any]) -> None:
        """Call C{observer(text)} with every text frame received, before parsing."""
        self._frameObservers.append(observer)

    def on(self, messageType: str | None, callback: Callable[[dict], Any]) -> None:
        """
        Call C{callback(message)} for every received message of this type
        (C{None}: of every type) that is not the response to a pending
        request.  It runs on the reader task: it must not block.
        """
        self._callbacks.setdefault(messageType, []).append(callback)

    async def _read(self) -> None:
        import websockets

        try:
            async for text in self.ws:
                for observer in self._frameObservers:
                    observer(text)
                try:
                    message = json.loads(text)
                except ValueError:
                    self.errors.append(f"not JSON: {text[:200]!r}")
                    continue
                self._dispatch(message if isinstance(message, dict) else {"value": message})
        except websockets.ConnectionClosed:
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(self.ws.close_code)
            for _, future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionLost("the connection closed"))
            self._arrived.set()

    def _dispatch(self, message: dict) -> None:
        messageType = message.get("messageType")
        self.counts[messageType] += 1
        pending = self._pending.get(message.get("transactionID")) if messageType else None
        if pending is not None and messageType in (pending[0], "ERROR_response"):
            del self._pending[message["transactionID"]]
            if not pending[1].done():
                pending[1].set_result(message)
            return
        for callback in self._callbacks.get(messageType, []) + self._callbacks.get(None, []):
            try:
                callback(message)
            except Exception as e:  # one broken callback must not end the reader
                self.errors.append(f"callback {callback!r} on {messageType}: {e!r}")
        if self.keep is None or self.keep(message):
            self.inbox.append(message)
            self._arrived.set()

    async def expect(self, messageType: str | None = None, timeout: float | None = None,
                     **match) -> dict:
        """
        Take the oldest kept message of this type (any type: C{None}) whose
        fields equal C{match}; wait for it if none is there yet.

        @raise NoMessage: none within C{timeout} (default: C{self.timeout}).
        @raise ConnectionLost: the connection closed first.
        """
        loop = asyncio.get_event_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        while True:
            for i, message in enumerate(self.inbox):
                if _matches(message, messageType, match):
                    return self.inbox.pop(i)
            if self.closed.done():
                raise ConnectionLost(f"connection closed waiting for {messageType} {match}; "
                                     f"have {self._summary()}")
            left = deadline - loop.time()
            if left <= 0:
                raise NoMessage(f"no {messageType} {match} within "
                                f"{self.timeout if timeout is None else timeout}s; "
                                f"have {self._summary()}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                pass

    def _summary(self) -> list:
        return self.inbox[-10:] + self.errors[-3:]

    async def events(self) -> AsyncIterator[dict]:
        """Every kept message, oldest first, as it arrives; ends when the connection closes."""
        while True:
            if self.inbox:
                yield self.inbox.pop(0)
                continue
            if self.closed.done():
                return
            self._arrived.clear()
            await self._arrived.wait()

    # -- sending -------------------------------------------------------------

    def newTransactionID(self) -> str:
        """A transactionID no other message of this client uses."""
        return f"{self._prefix}-{next(self._ids)}"

    async def sendRaw(self, data: str | bytes) -> None:
        """Send a frame as it is (C{str}: a text frame, C{bytes}: a binary frame)."""
        await self.ws.send(data)

    async def send(self, message: dict) -> str:
        """
        Send a message, adding a C{transactionID} if it has none; return that.

        @raise ConnectionLost: the connection is closed.
        """
        import websockets

        message = dict(message)
        message.setdefault("transactionID", self.newTransactionID())
        try:
            await self.ws.send(json.dumps(message))
        except websockets.ConnectionClosed as e:
            raise ConnectionLost(f"the connection closed: {e}") from None
        return message["transactionID"]

    async def request(self, messageType: str, timeout: float | None = None, **params) -> dict:
        """
        Send a request and return its response, whatever its status: the
        message with the same C{transactionID} whose type is the request's
        with C{_request} replaced by C{_response}, or C{ERROR_response}.

        @raise NoMessage: no response within C{timeout} (default: C{self.timeout}).
        @raise ConnectionLost: the connection closed first.
        """
        transactionID = self.newTransactionID()
        future = asyncio.get_event_loop().create_future()
        self._pending[transactionID] = (messageType.replace("_request", "_response"), future)
        try:
            await self.send({"messageType": messageType, **params,
                             "transactionID": transactionID})
            wait = self.timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                raise NoMessage(f"no response to {messageType} within {wait}s") from None
        finally:
            self._pending.pop(transactionID, None)

    async def respond(self, request: dict, sdp: str | None = None, status: int = 200,
                      reason: str = "OK") -> None:
        """Answer one of the server's requests (protocol.md 3)."""
        response = {"messageType": request["messageType"].replace("_request", "_response"),
                    "status": status, "reason": reason,
                    "transactionID": request["transactionID"]}
        if sdp is not None:
            response["sdp"] = sdp
        await self.send(response)

    async def close(self) -> None:
        """Close the connection (close handshake) and wait for the reader."""
        try:
            await asyncio.wait_for(self.ws.close(), self.timeout)
        finally:
            await asyncio.wait([self._reader], timeout=self.timeout)
            self._reader.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a vanished client)."""
        self.ws.transport.abort()

    # -- the conference ------------------------------------------------------

    async def _ok(self, messageType: str, **params) -> dict:
        response = await self.request(messageType, **params)
        if response.get("status") != 200:
            raise RequestFailed(response)
        return response

    async def create(self, conferenceID: str | None = None, **params) -> dict:
        """
        C{CONFERENCE_CREATE_request} (1.1); C{params} are its optional fields
        (C{password}, C{moderatorPassword}, C{maxMember}, ...).
        """
        if conferenceID is not None:
            params["conferenceID"] = conferenceID
        return await self._ok("CONFERENCE_CREATE_request", **params)

    async def join(self, conferenceID: str, name: str, password: str = "",
                   followRedirects: bool = True) -> dict:
        """
        C{CONFERENCE_JOIN_request} (1.2); remembers C{memberID} and C{iceServers}.

        A cluster node answers 302 with the C{url} of the node that hosts the
        conference (protocol.md 4.10): the client then L{reconnect}s there
        and joins again, at most L{MAX_REDIRECTS} times (C{redirects} lists
        where it went), unless C{followRedirects} is false.
        """
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.request("CONFERENCE_JOIN_request", conferenceID=conferenceID,
                                          name=name, password=password)
            url = response.get("url")
            if not (followRedirects and response.get("status") == 302 and isinstance(url, str)):
                break
            self.redirects.append(url)
            await self.reconnect(url)
        if response.get("status") != 200:
            raise RequestFailed(response)
        self.memberID = response.get("memberID")
        self.iceServers = list(response.get("iceServers") or [])
        return response

    async def leave(self) -> dict:
        """C{CONFERENCE_LEAVE_request} (1.5)."""
        response = await self._ok("CONFERENCE_LEAVE_request")
        self.memberID = None
        return response

    async def chat(self, text: str) -> dict:
        """C{CHAT_MESSAGE_request} (1.7) with C{text}."""
        return await self._ok("CHAT_MESSAGE_request", message={"text": text})

    async def lock(self, locked: bool = True) -> dict:
        """C{CONFERENCE_LOCK_request} (4.3), moderators only."""
        return await self._ok("CONFERENCE_LOCK_request", locked=locked)

    async def kick(self, memberID: str) -> dict:
        """C{CONFERENCE_KICK_request} (1.6), moderators only."""
        return await self._ok("CONFERENCE_KICK_request", memberID=memberID)

    async def mute(self, audio: bool | None = None, video: bool | None = None,
                   memberID: str | None = None) -> dict:
        """C{MEDIA_MUTE_request} (4.4): our own state, or (moderators) another member's."""
        params = {k: v for k, v in (("audio", audio), ("video", video), ("memberID", memberID))
                  if v is not None}
        return await self._ok("MEDIA_MUTE_request", **params)

    async def describe(self, description: str) -> dict:
        """C{CONFERENCE_DESCRIPTION_request} (1.8), moderators only."""
        return await self._ok("CONFERENCE_DESCRIPTION_request", description=description)

    # -- media ---------------------------------------------------------------

    def rtcConfiguration(self):
        """The aiortc configuration of our peer connections: the join's ICE servers or none."""
        from aiortc import RTCConfiguration, RTCIceServer

        return RTCConfiguration(iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"),
                         credential=s.get("credential")) for s in self.iceServers])

    async def share(self, audio: bool, video: bool, maxVideoBitrate: int | None = None) -> dict:
        """
        C{MEDIA_SHARE_request} (1.3) and the server's offer that follows:
        return the C{MEDIA_RECEIVE_request} (answer it with L{respond}).
        """
        params = {"audio": audio, "video": video}
        if maxVideoBitrate is not None:
            params["maxVideoBitrate"] = maxVideoBitrate
        await self._ok("MEDIA_SHARE_request", **params)
        return await self.expect("MEDIA_RECEIVE_request")

    async def publish(self, tracks=(), maxVideoBitrate: int | None = None,
                      answer: Callable[[str], Awaitable[str]] | None = None,
                      audio: bool | None = None, video: bool | None = None) -> Publication:
        """
        Share media: C{MEDIA_SHARE_request} for the kinds of C{tracks}, a
        new peer connection that answers the server's offer with them.

        @param tracks: aiortc C{MediaStreamTrack}s (one audio, one video at most).
        @param answer: instead of C{tracks}, a coroutine function that makes
            the answer to the offer SDP itself (a test peer that instruments
            its own peer connection); then say C{audio} and C{video}.
        @param audio: share audio (default: C{tracks} has an audio track).
        @param video: share video (default: C{tracks} has a video track).
        @return: a L{Publication}; C{pc} is C{None} when C{answer} was given.
        """
        from aiortc import RTCPeerConnection, RTCSessionDescription

        kinds = {track.kind for track in tracks}
        offer = await self.share("audio" in kinds if audio is None else audio,
                                 "video" in kinds if video is None else video, maxVideoBitrate)
        pc = None
        if answer is None:
            pc = RTCPeerConnection(self.rtcConfiguration())
            for track in tracks:
                pc.addTrack(track)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            sdp = pc.localDescription.sdp
        else:
            sdp = await answer(offer["sdp"])
        await self.respond(offer, sdp)
        return Publication(pc, offer["sdp"], sdp)

    async def requestMedia(self, memberID: str, audio: bool = True, video: bool = True) -> dict:
        """
        C{MEDIA_request} (1.4) for one member and the server's offer that
        follows: return the C{SDP_request} (answer it with L{respond}).
        """
        await self._ok("MEDIA_request", members=[
            {"memberID": memberID, "audio": audio, "video": video}])
        return await self.expect("SDP_request", transactionID=memberID)

    async def subscribe(self, memberID: str, audio: bool = True, video: bool = True,
                        answer: Callable[[str], Awaitable[str]] | None = None) -> Subscription:
        """
        Receive a member's media: C{MEDIA_request}, a new peer connection
        that answers the server's C{SDP_request}.  The member must be
        sharing (wait for its C{MEDIA_indication} with C{available}).

        @param answer: as for L{publish}.
        @return: a L{Subscription} whose C{tracks} fill in (by kind) as
            aiortc reports them; L{Subscription.track} waits for one.
        """
        from aiortc import RTCPeerConnection, RTCSessionDescription

        offer = await self.requestMedia(memberID, audio, video)
        subscription = Subscription(memberID, None, offer["sdp"])
        if answer is None:
            pc = subscription.pc = RTCPeerConnection(self.rtcConfiguration())
            pc.on("track", subscription._addTrack)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            sdp = pc.localDescription.sdp
        else:
            sdp = await answer(offer["sdp"])
        subscription.answer = sdp
        await self.respond(offer, sdp)
        return subscription


@dataclass
class Publication:
    """
    Our shared media.

    @ivar pc: the aiortc C{RTCPeerConnection} (C{None} with a custom answer).
    @ivar offer: the server's offer SDP.
    @ivar answer: our answer SDP.
    """

    pc: Any
    offer: str
    answer: str

    async def close(self) -> None:
        """Hang up the peer connection (the server sees media end)."""
        if self.pc is not None:
            await self.pc.close()


@dataclass
class Subscription:
    """
    Another member's media, received.

    @ivar memberID: whose.
    @ivar pc: the aiortc C{RTCPeerConnection} (C{None} with a custom answer).
    @ivar offer: the server's offer SDP.
    @ivar tracks: the remote C{MediaStreamTrack}s by kind (C{"audio"}, C{"video"}).
    """

    memberID: str
    pc: Any
    offer: str
    answer: str = ""
    tracks: dict = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def _addTrack(self, track) -> None:
        self.tracks[track.kind] = track
        self._arrived.set()

    async def track(self, kind: str, timeout: float = DEFAULT_TIMEOUT):
        """The remote track of this kind, once aiortc has it."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while kind not in self.tracks:
            left = deadline - loop.time()
            if left <= 0:
                raise NoMessage(f"no {kind} track from {self.memberID} within {timeout}s")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                pass
        return self.tracks[kind]

    async def close(self) -> None:
        """Hang up the peer connection."""
        if self.pc is not None:
            await self.pc.close()
