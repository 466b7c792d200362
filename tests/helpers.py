"""
Test helpers: a real server on a real loopback socket (in-process), and the
package's WebSocket client (L{ahoyconference.client}, on the C{websockets}
library, on the same asyncio loop as the asyncio reactor that trial runs
with C{--reactor=asyncio}).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint

from ahoyconference.client import ConnectionLost, NoMessage, ProtocolClient
from ahoyconference.config import Config, IceSettings, Limits
from ahoyconference.policy import PasswordPolicy
from ahoyconference.service import ConferenceService
from ahoyconference.web import makeSite

TIMEOUT = 10.0

#: Every frame any test client received, every log line of the test process,
#: and every password or token a test client sent: tests.test_zz_secrets
#: checks that no secret ever shows up in the first two.
TRANSCRIPT: list[str] = []
LOGLINES: list[str] = []
SECRETS: set[str] = set()
SECRET_FIELDS = ("password", "listenerPassword", "moderatorPassword")


def _captureLog(event) -> None:
    from twisted.logger import formatEvent

    text = formatEvent(event)
    if text:
        LOGLINES.append(text)
    failure = event.get("log_failure")
    if failure is not None:
        LOGLINES.append(failure.getTraceback())


def _installLogCapture() -> None:
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(_captureLog)


_installLogCapture()


def asyncTest(f):
    """Run an C{async def} test method on the reactor's asyncio loop."""

    @functools.wraps(f)
    def wrapper(self, *args, **kwargs):
        return defer.Deferred.fromFuture(asyncio.ensure_future(f(self, *args, **kwargs)))

    return wrapper


def testConfig(**changes) -> Config:
    """A config for tests: media on loopback only, generous limits."""
    limits = changes.pop("limits", None) or Limits(
        join_rate=0, chat_rate=0, max_connections_per_ip=0, max_conferences_per_client=0)
    udpPort = 0
    if os.environ.get("AHOY_TEST_ONE_PORT"):  # the whole suite on one UDP port (issue 16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            udpPort = s.getsockname()[1]
    base = Config(ice=IceSettings(host_addresses=("127.0.0.1",), udp_port=udpPort),
                  limits=limits)
    return base.replace(**changes)


class Server:
    """
    A server listening on 127.0.0.1 on a free port.

    @ivar service: the L{ConferenceService}.
    @ivar url: the WebSocket URL.
    """

    def __init__(self, config=None, clock=None, policy=None, engine=None):
        from twisted.internet import reactor

        self.reactor = reactor
        self.config = config or testConfig()
        self.clock = clock or reactor
        if engine is None:
            from ahoyconference.nomedia import NoMediaEngine

            makeEngine = NoMediaEngine
        elif engine == "aiortc":
            from ahoyconference.media.engine import AiortcMediaEngine

            def makeEngine(listener):
                return AiortcMediaEngine(listener, self.config.ice, reactor,
                                         iceTimeout=self.config.limits.ice_timeout,
                                         simulcast=self.config.simulcast)
        else:
            def makeEngine(listener):
                return engine
        self.service = ConferenceService(self.config, self.clock, policy or PasswordPolicy(),
                                         makeEngine)
        self.site = makeSite(self.service)
        self.port = None

    async def start(self) -> Server:
        """Listen; return self."""
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.port = await defer.Deferred.asFuture(endpoint.listen(self.site), asyncio.get_event_loop())
        self.service.startService()
        return self

    @property
    def url(self) -> str:
        """The ws:// URL of the server."""
        return f"ws://127.0.0.1:{self.port.getHost().port}/"

    @property
    def http(self) -> str:
        """The http:// URL of the server."""
        return f"http://127.0.0.1:{self.port.getHost().port}/"

    async def stop(self) -> None:
        """Stop listening, close every session and the engine; wait for the sockets."""
        if self.port is not None:
            await defer.Deferred.asFuture(defer.maybeDeferred(self.port.stopListening),
                                          asyncio.get_event_loop())
        d = self.service.stopService()
        if d is not None:
            await defer.Deferred.asFuture(defer.maybeDeferred(lambda: d), asyncio.get_event_loop())
        for _ in range(300):
            if not self.service.sessions:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        cancelBatchedTimers(self.reactor)


def cancelBatchedTimers(reactor) -> None:
    """
    Autobahn's timers (ping, handshake timeouts) share txaio's batched timer,
    whose bucket stays scheduled after every call in it was cancelled; trial
    would call that a dirty reactor.  Cancel the empty buckets.
    """
    for call in reactor.getDelayedCalls():
        owner = getattr(call.func, "__self__", None)
        if type(owner).__name__ == "_BatchedTimer" and call.active():
            call.cancel()
            # Forget the bucket too, so that a connection closing later does
            # not cancel a call in it again (AlreadyCancelled).
            owner._buckets.pop(call.args[0], None)


class Client(ProtocolClient):
    """
    The package's protocol client (L{ahoyconference.client.ProtocolClient})
    with what the tests add: every frame goes to C{raw} and L{TRANSCRIPT},
    every password sent to L{SECRETS}, a failed wait is a test failure
    (C{AssertionError}), and L{quiet} drains what arrived.

    C{request()} sends a request and returns its response; C{expect()}
    returns the next message of a type (others are kept for later).
    """

    def __init__(self, ws, timeout: float = TIMEOUT, keep=None):
        super().__init__(ws, timeout, keep)
        self.raw: list[str] = []
        self.observeFrames(self._record)

    def _record(self, text: str) -> None:
        self.raw.append(text)
        TRANSCRIPT.append(text)

    @classmethod
    async def connect(cls, url: str, **kwargs) -> Client:
        """Open a connection offering the subprotocol."""
        kwargs.setdefault("timeout", TIMEOUT)
        return await super().connect(url, **kwargs)

    @property
    def received(self) -> list[dict]:
        """What arrived and was not taken yet (the inbox)."""
        return self.inbox

    async def send(self, message: dict) -> str:
        """Send a message (a transactionID is added if absent); return its transactionID."""
        for name in SECRET_FIELDS:
            if isinstance(message.get(name), str) and len(message[name]) >= 6:
                SECRETS.add(message[name])
        return await super().send(message)

    async def request(self, messageType: str, timeout: float | None = None, **params) -> dict:
        """Send a request and wait for the response with its transactionID."""
        try:
            return await super().request(messageType, timeout, **params)
        except (NoMessage, ConnectionLost) as e:
            raise AssertionError(f"{e}; have {self.inbox}") from None

    async def expect(self, messageType: str | None = None, timeout: float = TIMEOUT,
                     **match) -> dict:
        """The next received message with this type (and these field values)."""
        try:
            return await super().expect(messageType, timeout, **match)
        except (NoMessage, ConnectionLost) as e:
            raise AssertionError(str(e)) from None

    def _summary(self) -> list:
        return self.inbox

    async def quiet(self, seconds: float = 0.2) -> list[dict]:
        """Wait a little and return (and drop) whatever arrived meanwhile."""
        await asyncio.sleep(seconds)
        out, self.inbox[:] = list(self.inbox), []
        return out

    async def close(self) -> None:
        """Close the connection and wait for the reader."""
        await self.ws.close()
        await self._reader


async def createAndJoin(url: str, conferenceID: str = "room", name: str = "alice",
                        joinPassword: str = "", **create) -> tuple[Client, dict]:
    """
    Connect, create a conference (if it does not exist) with the C{create}
    parameters, and join it with C{joinPassword}.
    """
    client = await Client.connect(url)
    await client.request("CONFERENCE_CREATE_request", conferenceID=conferenceID, **create)
    joined = await client.request("CONFERENCE_JOIN_request", conferenceID=conferenceID,
                                  name=name, password=joinPassword)
    assert joined["status"] == 200, joined
    return client, joined


async def join(url: str, conferenceID: str = "room", name: str = "bob",
               password: str = "") -> tuple[Client, dict]:
    """Connect and join an existing conference; return the client and the response."""
    client = await Client.connect(url)
    joined = await client.request("CONFERENCE_JOIN_request", conferenceID=conferenceID,
                                  name=name, password=password)
    return client, joined
