"""
The twistd plugin: options, the reactor check, and the real C{twistd}
started as the README does, talked to over a real socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile

from twisted.trial import unittest

from ahoyconference import tap
from tests.helpers import Client, asyncTest
from tests.serverprocess import ServerProcess


class OptionsTests(unittest.TestCase):
    """L{tap.Options}."""

    def test_defaultPort(self):
        """Without --port the server listens on 127.0.0.1:8080."""
        o = tap.Options()
        o.parseOptions([])
        self.assertEqual(o["configuration"].ports, ("tcp:8080:interface=127.0.0.1",))

    def test_portRepeatable(self):
        """--port may be given several times; it overrides the config's ports."""
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('[server]\nports = ["tcp:9000"]\n')
        self.addCleanup(os.unlink, f.name)
        o = tap.Options()
        o.parseOptions(["--config", f.name, "--port", "tcp:1", "--port=ssl:2"])
        self.assertEqual(o["configuration"].ports, ("tcp:1", "ssl:2"))
        o = tap.Options()
        o.parseOptions(["--config", f.name])
        self.assertEqual(o["configuration"].ports, ("tcp:9000",))

    def test_policyOverride(self):
        """--policy overrides [policy] name."""
        o = tap.Options()
        o.parseOptions(["--policy", "token"])
        self.assertEqual(o["configuration"].policy_name, "token")

    def test_badConfigIsUsageError(self):
        """A broken config file stops option parsing with the key and file named."""
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write("[limits]\nmax_members = 'many'\n")
        self.addCleanup(os.unlink, f.name)
        o = tap.Options()
        e = self.assertRaises(SystemExit, o.parseOptions, ["--config", f.name])
        self.assertIn(f.name, str(e.code))
        self.assertIn("max_members", str(e.code))

    def test_pluginFile(self):
        """The plugin file only names ahoyconference.tap."""
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        from twisted import plugins

        makers = [p for p in getPlugins(IServiceMaker, plugins) if p.tapname == "ahoyconference"]
        self.assertEqual(len(makers), 1)
        self.assertEqual(makers[0].module, "ahoyconference.tap")


def twistd(test, config: str | None = None, twistdArgs=(), pluginArgs=()) -> ServerProcess:
    """The venv's C{twistd ... ahoyconference} from the repository, started."""
    return ServerProcess.twistd(os.path.abspath(test.mktemp()), config, twistdArgs=list(twistdArgs),
                                pluginArgs=list(pluginArgs)).start()


class TwistdTests(unittest.TestCase):
    """The real C{twistd ahoyconference} in a subprocess."""

    async def roundTrip(self, extra: list[str]):
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        log = os.path.join(tmp, "twistd.log")
        server = twistd(self, '[ice]\nhost_addresses = ["127.0.0.1"]\n'
                              '[[rooms]]\nid = "lobby"\npassword = "s3cret-pw"\n',
                        twistdArgs=[*extra, "-l", log])
        try:
            await server.awaitPort()
            c = await Client.connect(server.url)
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="lobby", name="n",
                                password="s3cret-pw")
            self.assertEqual((r["status"], r["speaker"]), (200, True))
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="lobby", name="n")
            self.assertEqual(r["status"], 409)
            await c.close()
        finally:
            code = await server.astop()
        self.assertEqual(code, 0, server.output())
        with open(log) as f:
            text = f.read()
        self.assertIn("joined lobby as speaker", text)
        self.assertIn("AsyncioSelectorReactor", text)
        self.assertNotIn("s3cret-pw", text)
        return text

    @asyncTest
    async def test_plainTwistd(self):
        """C{twistd ahoyconference} with no --reactor installs asyncio by itself."""
        await self.roundTrip([])

    @asyncTest
    async def test_asyncioReactorOption(self):
        """C{twistd --reactor=asyncio ahoyconference} works too."""
        await self.roundTrip(["--reactor=asyncio"])

    @asyncTest
    async def test_otherReactorRefused(self):
        """Another reactor: one line that says to pass --reactor=asyncio."""
        server = twistd(self, twistdArgs=["--reactor=select"])
        self.assertNotEqual(await server.awaitExit(), 0)
        self.assertIn("--reactor=asyncio", server.output())
        self.assertNotIn("Traceback", server.output())

    @asyncTest
    async def test_unknownPolicy(self):
        """An unknown policy stops start-up listing the known ones."""
        server = twistd(self, pluginArgs=["--policy=nope"])
        self.assertNotEqual(await server.awaitExit(), 0)
        self.assertIn("unknown policy 'nope'", server.output())
        self.assertIn("password", server.output())


class ShutdownTests(unittest.TestCase):
    """SIGTERM: every WebSocket gets a close frame, then twistd exits 0."""

    @asyncTest
    async def test_sigterm(self):
        server = twistd(self)
        clients = []
        try:
            await server.awaitPort()
            for _ in range(3):
                c = await Client.connect(server.url)
                clients.append(c)
            await clients[0].request("CONFERENCE_CREATE_request", conferenceID="r")
            for c in clients:
                r = await c.request("CONFERENCE_JOIN_request", conferenceID="r", name="x")
                self.assertEqual(r["status"], 200)
            server.signal(signal.SIGTERM)
            codes = await asyncio.wait_for(asyncio.gather(*[c.closed for c in clients]), 10)
            self.assertEqual(set(codes), {1001})
            self.assertEqual(await server.awaitExit(10), 0, server.output())
        finally:
            await server.astop()
            for c in clients:
                await c.close()


class _StoppingReactor:
    """What L{_ReloadOnHangup} uses of a reactor: calls recorded, not run."""

    def __init__(self):
        self.fromThread: list = []
        self.stops = 0

    def sigTerm(self, *args):
        """The reactor's own handler (it logs inside the signal handler)."""

    def sigInt(self, *args):
        """The reactor's own handler."""

    def callWhenRunning(self, f, *args):
        f(*args)

    def callFromThread(self, f, *args):
        self.fromThread.append((f, args))

    def stop(self):
        from twisted.internet.error import ReactorNotRunning

        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning()


class StopSignalTests(unittest.TestCase):
    """
    SIGTERM and SIGINT handlers that take no lock: the reactor's own log
    from inside the handler and could wait forever for twistd's log file.
    """

    def test_handlerOnlyWakesTheReactor(self):
        from twisted.logger import globalLogPublisher

        reactor = _StoppingReactor()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        signal.signal(signal.SIGTERM, reactor.sigTerm)
        signal.signal(signal.SIGINT, reactor.sigInt)
        top = tap._ReloadOnHangup(None, None, reactor)
        top.startService()
        handler = signal.getsignal(signal.SIGTERM)
        self.assertEqual(handler, top._stopSignal)
        self.assertEqual(signal.getsignal(signal.SIGINT), top._stopSignal)

        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to our handler
        handler(signal.SIGTERM, None)  # a second one while stopping
        self.assertEqual(events, [])  # nothing logged inside the handler
        self.assertEqual(reactor.stops, 0)
        for f, args in reactor.fromThread:
            f(*args)
        self.assertEqual(reactor.stops, 2)
        said = [e["log_format"].format(**e) for e in events if "log_format" in e]
        self.assertEqual(said.count("Received SIGTERM, shutting down."), 2)

        top.stopService()
        self.assertEqual(signal.getsignal(signal.SIGTERM), reactor.sigTerm)
        self.assertEqual(signal.getsignal(signal.SIGINT), reactor.sigInt)

    def test_othersLeftAlone(self):
        """Handlers that are not the reactor's (a debugger's SIGINT) stay."""
        reactor = _StoppingReactor()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))

        def mine(*args):
            pass

        signal.signal(signal.SIGTERM, reactor.sigTerm)
        signal.signal(signal.SIGINT, mine)
        top = tap._ReloadOnHangup(None, None, reactor)
        top.startService()
        self.assertEqual(signal.getsignal(signal.SIGINT), mine)
        top.stopService()


class ReloadTests(unittest.TestCase):
    """SIGHUP re-reads rooms and limits without dropping anyone."""

    @asyncTest
    async def test_sighup(self):
        server = twistd(self, "[limits]\nmax_chat_bytes = 1000\n")
        config = next(a for a in server.argv if a.startswith("--config=")).split("=", 1)[1]
        clients = []
        try:
            await server.awaitPort()
            a = await Client.connect(server.url)
            clients.append(a)
            await a.request("CONFERENCE_CREATE_request", conferenceID="r")
            await a.request("CONFERENCE_JOIN_request", conferenceID="r", name="a")
            r = await a.request("CHAT_MESSAGE_request", message={"text": "x" * 2000})
            self.assertEqual(r["status"], 400)
            with open(config, "w") as f:
                f.write('[limits]\nmax_chat_bytes = 5000\n[[rooms]]\nid = "new-room"\n')
            server.signal(signal.SIGHUP)
            for _ in range(100):
                r = await a.request("CHAT_MESSAGE_request", message={"text": "x" * 2000})
                if r["status"] == 200:
                    break
                await asyncio.sleep(0.05)
            self.assertEqual(r["status"], 200)
            b = await Client.connect(server.url)
            clients.append(b)
            r = await b.request("CONFERENCE_JOIN_request", conferenceID="new-room", name="b")
            self.assertEqual(r["status"], 200)
            # A broken file keeps the running configuration.
            with open(config, "w") as f:
                f.write("[limits]\nmax_chat_bytes = 'lots'\n")
            server.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            r = await a.request("CHAT_MESSAGE_request", message={"text": "x" * 2000})
            self.assertEqual(r["status"], 200)
            self.assertIsNone(server.returncode)
        finally:
            for c in clients:
                await c.close()
            await server.astop()
        out = server.output()
        self.assertIn("configuration reloaded", out)
        self.assertIn("reload failed, keeping the running configuration", out)

    @asyncTest
    async def test_sighupWithoutConfig(self):
        """Without --config, SIGHUP is logged and changes nothing (the process lives)."""
        server = twistd(self)
        try:
            await server.awaitPort()
            server.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            c = await Client.connect(server.url)
            r = await c.request("CONFERENCE_CREATE_request")
            self.assertEqual(r["status"], 200)
            await c.close()
        finally:
            code = await server.astop()
        self.assertEqual(code, 0, server.output())
        self.assertIn("no --config file to re-read", server.output())
