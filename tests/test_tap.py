"""
The twistd plugin: options, the reactor check, and the real C{twistd}
started as the README does, talked to over a real socket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile

from twisted.trial import unittest

from ahoyconference import tap
from tests.helpers import Client, asyncTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def runTwistd(*args, env=None):
    """Start the venv's C{twistd ...} from the repository; return the process."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = ROOT + os.pathsep + environ.get("PYTHONPATH", "")
    environ.update(env or {})
    return await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "twistd"), *args, cwd=ROOT, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def waitForPort(port: int, proc, timeout: float = 30.0) -> None:
    loop = asyncio.get_event_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            out = await proc.stdout.read()
            raise AssertionError(f"twistd exited {proc.returncode}: {out.decode()}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError("twistd did not listen in time")


async def stop(proc) -> bytes:
    if proc.returncode is None:
        proc.terminate()
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out


class TwistdTests(unittest.TestCase):
    """The real C{twistd ahoyconference} in a subprocess."""

    async def roundTrip(self, extra: list[str]):
        port = freePort()
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        config = os.path.join(tmp, "ahoy.toml")
        with open(config, "w") as f:
            f.write('[ice]\nhost_addresses = ["127.0.0.1"]\n'
                    '[[rooms]]\nid = "lobby"\npassword = "s3cret-pw"\n')
        log = os.path.join(tmp, "twistd.log")
        proc = await runTwistd(*extra, "-n", "--pidfile=", "-l", log, "ahoyconference",
                               f"--port=tcp:{port}:interface=127.0.0.1", f"--config={config}")
        try:
            await waitForPort(port, proc)
            c = await Client.connect(f"ws://127.0.0.1:{port}/")
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="lobby", name="n",
                                password="s3cret-pw")
            self.assertEqual((r["status"], r["speaker"]), (200, True))
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="lobby", name="n")
            self.assertEqual(r["status"], 409)
            await c.close()
        finally:
            out = await stop(proc)
        self.assertEqual(proc.returncode, 0, out)
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
        proc = await runTwistd("--reactor=select", "-n", "--pidfile=", "ahoyconference",
                               "--port=tcp:0:interface=127.0.0.1")
        out = await asyncio.wait_for(proc.communicate(), 30)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(b"--reactor=asyncio", out[0])
        self.assertNotIn(b"Traceback", out[0])

    @asyncTest
    async def test_unknownPolicy(self):
        """An unknown policy stops start-up listing the known ones."""
        proc = await runTwistd("-n", "--pidfile=", "ahoyconference", "--policy=nope",
                               "--port=tcp:0:interface=127.0.0.1")
        out = await asyncio.wait_for(proc.communicate(), 30)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(b"unknown policy 'nope'", out[0])
        self.assertIn(b"password", out[0])


class ShutdownTests(unittest.TestCase):
    """SIGTERM: every WebSocket gets a close frame, then twistd exits 0."""

    @asyncTest
    async def test_sigterm(self):
        port = freePort()
        proc = await runTwistd("-n", "--pidfile=", "ahoyconference",
                               f"--port=tcp:{port}:interface=127.0.0.1")
        clients = []
        try:
            await waitForPort(port, proc)
            for _ in range(3):
                c = await Client.connect(f"ws://127.0.0.1:{port}/")
                clients.append(c)
            await clients[0].request("CONFERENCE_CREATE_request", conferenceID="r")
            for c in clients:
                r = await c.request("CONFERENCE_JOIN_request", conferenceID="r", name="x")
                self.assertEqual(r["status"], 200)
            proc.terminate()
            codes = await asyncio.wait_for(asyncio.gather(*[c.closed for c in clients]), 10)
            self.assertEqual(set(codes), {1001})
            out = await asyncio.wait_for(proc.communicate(), 10)
            self.assertEqual(proc.returncode, 0, out)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for c in clients:
                await c.close()


class ReloadTests(unittest.TestCase):
    """SIGHUP re-reads rooms and limits without dropping anyone."""

    @asyncTest
    async def test_sighup(self):
        import signal

        port = freePort()
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        config = os.path.join(tmp, "ahoy.toml")
        with open(config, "w") as f:
            f.write("[limits]\nmax_chat_bytes = 1000\n")
        proc = await runTwistd("-n", "--pidfile=", "ahoyconference", f"--config={config}",
                               f"--port=tcp:{port}:interface=127.0.0.1")
        clients = []
        try:
            await waitForPort(port, proc)
            a = await Client.connect(f"ws://127.0.0.1:{port}/")
            clients.append(a)
            await a.request("CONFERENCE_CREATE_request", conferenceID="r")
            await a.request("CONFERENCE_JOIN_request", conferenceID="r", name="a")
            r = await a.request("CHAT_MESSAGE_request", message={"text": "x" * 2000})
            self.assertEqual(r["status"], 400)
            with open(config, "w") as f:
                f.write('[limits]\nmax_chat_bytes = 5000\n[[rooms]]\nid = "new-room"\n')
            proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                r = await a.request("CHAT_MESSAGE_request", message={"text": "x" * 2000})
                if r["status"] == 200:
                    break
                await asyncio.sleep(0.05)
            self.assertEqual(r["status"], 200)
            b = await Client.connect(f"ws://127.0.0.1:{port}/")
            clients.append(b)
            r = await b.request("CONFERENCE_JOIN_request", conferenceID="new-room", name="b")
            self.assertEqual(r["status"], 200)
            # A broken file keeps the running configuration.
            with open(config, "w") as f:
                f.write("[limits]\nmax_chat_bytes = 'lots'\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            r = await a.request("CHAT_MESSAGE_request", message={"text": "x" * 2000})
            self.assertEqual(r["status"], 200)
            self.assertIsNone(proc.returncode)
        finally:
            for c in clients:
                await c.close()
            out = await stop(proc)
        self.assertIn(b"configuration reloaded", out)
        self.assertIn(b"reload failed, keeping the running configuration", out)

    @asyncTest
    async def test_sighupWithoutConfig(self):
        """Without --config, SIGHUP is logged and changes nothing (the process lives)."""
        import signal

        port = freePort()
        proc = await runTwistd("-n", "--pidfile=", "ahoyconference",
                               f"--port=tcp:{port}:interface=127.0.0.1")
        try:
            await waitForPort(port, proc)
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            c = await Client.connect(f"ws://127.0.0.1:{port}/")
            r = await c.request("CONFERENCE_CREATE_request")
            self.assertEqual(r["status"], 200)
            await c.close()
        finally:
            out = await stop(proc)
        self.assertEqual(proc.returncode, 0, out)
        self.assertIn(b"no --config file to re-read", out)
