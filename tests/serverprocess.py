"""
The one way to run a server in a process of its own for tests, benchmarks
and the package test: L{ServerProcess}.  (A server inside the test process is
C{tests.helpers.Server}.)

    server = ServerProcess.twistd(workdir, config='[ice]\\nhost_addresses = ["127.0.0.1"]\\n')
    server.start()
    await server.awaitPort()            # or server.waitForPort() outside a loop
    ... server.url, server.http, server.pid, server.output() ...
    await server.astop()                # or server.stop(): SIGTERM by PID, then SIGKILL

The process gets a session of its own (C{start_new_session}); its output
(stdout and stderr) goes to a log file; it is stopped by its own PID only,
never by name.  It listens on 127.0.0.1 only.  Standard library only: the
package test runs it with the development venv's Python as root.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def freePort() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistdCommand(python: str = sys.executable) -> list[str]:
    """The C{twistd} of this interpreter's environment (its script, or C{-c} run())."""
    script = os.path.join(os.path.dirname(python), "twistd")
    if os.path.exists(script):
        return [script]
    return [python, "-c", "from twisted.scripts.twistd import run; run()"]


class ServerFailed(Exception):
    """The server exited, or did not listen or log in time; the message has its output."""


class ServerProcess:
    """
    A server process we started.

    @ivar argv: its command line.
    @ivar port: the TCP port it is to listen on (127.0.0.1).
    @ivar logPath: where its output goes.
    @ivar popen: the C{subprocess.Popen}, once started.
    """

    def __init__(self, argv: list[str], port: int, logPath: str, *, cwd: str = ROOT,
                 env: dict | None = None, scheme: str = "ws", preexec_fn=None):
        self.argv = argv
        self.port = port
        self.logPath = logPath
        self.cwd = cwd
        self.env = env if env is not None else dict(os.environ)
        self.scheme = scheme
        self.preexec_fn = preexec_fn
        self.popen: subprocess.Popen | None = None

    @classmethod
    def twistd(cls, workdir: str, config: str | None = None, *, port: int | None = None,
               twistdArgs: list[str] = (), pluginArgs: list[str] = (), env: dict | None = None,
               command: list[str] | None = None, name: str = "twistd", endpoint: str | None = None,
               **kwargs) -> ServerProcess:
        """
        C{twistd -n --pidfile= ahoyconference --port=tcp:PORT:interface=127.0.0.1},
        from the repository (its root first on C{PYTHONPATH}, so that twistd
        finds the plugin of an editable install).

        @param config: the text of a TOML configuration, written into
            C{workdir} and passed with C{--config}.
        @param twistdArgs: twistd's own options (before C{ahoyconference}).
        @param pluginArgs: more options of the plugin.
        @param env: added to this process's environment.
        @param command: instead of L{twistdCommand}, e.g. a wrapper script.
        @param endpoint: instead of C{tcp:PORT:interface=127.0.0.1}, e.g. an
            C{ssl:PORT:interface=127.0.0.1:...} endpoint on C{port} (then
            also say C{scheme="wss"}).
        """
        port = port or freePort()
        os.makedirs(workdir, exist_ok=True)
        args = list(pluginArgs)
        if config is not None:
            path = os.path.join(workdir, f"{name}.toml")
            with open(path, "w") as f:
                f.write(config)
            args.append(f"--config={path}")
        environ = dict(os.environ)
        environ["PYTHONPATH"] = ROOT + (os.pathsep + environ["PYTHONPATH"]
                                        if environ.get("PYTHONPATH") else "")
        # A server that hangs is killed with SIGABRT first: faulthandler then
        # writes every thread's stack into its output (see L{_kill}).
        environ["PYTHONFAULTHANDLER"] = "1"
        environ.update(env or {})
        endpoint = endpoint or f"tcp:{port}:interface=127.0.0.1"
        argv = ((command or twistdCommand()) + ["-n", "--pidfile=", *twistdArgs, "ahoyconference",
                                                f"--port={endpoint}", *args])
        return cls(argv, port, os.path.join(workdir, f"{name}.log"), env=environ, **kwargs)

    # -- running ---------------------------------------------------------------

    def start(self) -> ServerProcess:
        """Start it (output to C{logPath}); return self."""
        with open(self.logPath, "ab") as log:
            self.popen = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, preexec_fn=self.preexec_fn)
        return self

    @property
    def pid(self) -> int:
        """Its process ID."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it runs."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status, or C{None} while it runs."""
        return self.popen.poll() if self.popen is not None else None

    @property
    def url(self) -> str:
        """Its WebSocket URL."""
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        """Its HTTP URL."""
        return f"{'https' if self.scheme == 'wss' else 'http'}://127.0.0.1:{self.port}/"

    def output(self) -> str:
        """What it wrote so far."""
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _failed(self, why: str) -> ServerFailed:
        text = f"{' '.join(self.argv[:6])}...: {why}; its output ({self.logPath}):\n{self.output()[-4000:]}"
        twistdLog = self._twistdLog()
        if twistdLog is not None:
            try:
                with open(twistdLog, errors="replace") as f:
                    text += f"\nits log ({twistdLog}):\n{f.read()[-4000:]}"
            except OSError:
                pass
        return ServerFailed(text)

    def _twistdLog(self) -> str | None:
        """The file named by twistd's C{-l}/C{--logfile}, if it was given one."""
        for i, arg in enumerate(self.argv):
            if arg in ("-l", "--logfile") and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith("--logfile="):
                return arg.split("=", 1)[1]
        return None

    def _listening(self) -> bool:
        if self.returncode is not None:
            raise self._failed(f"exited with {self.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def waitForPort(self, timeout: float = 60.0) -> None:
        """Block until it accepts TCP connections; L{ServerFailed} if it exits first or never does."""
        deadline = time.monotonic() + timeout
        while not self._listening():
            if time.monotonic() > deadline:
                raise self._failed(f"nothing listens on {self.port} after {timeout} s")
            time.sleep(0.2)

    async def awaitPort(self, timeout: float = 60.0) -> None:
        """L{waitForPort} without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.returncode is not None:
                raise self._failed(f"exited with {self.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if loop.time() > deadline:
                    raise self._failed(f"nothing listens on {self.port} after {timeout} s")
                await asyncio.sleep(0.2)

    def wait(self, timeout: float = 30.0) -> int:
        """Block until it exits by itself; return its status."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failed(f"still running after {timeout} s") from None

    async def awaitExit(self, timeout: float = 30.0) -> int:
        """Wait (without blocking the loop) until it exits by itself; return its status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.returncode is None:
            if loop.time() > deadline:
                raise self._failed(f"still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.returncode

    def waitForOutput(self, pattern: str, timeout: float = 30.0) -> str:
        """Block until its output matches C{pattern} (a regular expression); return the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if re.search(pattern, out):
                return out
            if self.returncode is not None:
                break
            time.sleep(0.2)
        raise self._failed(f"did not log /{pattern}/")

    # -- stopping --------------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send it a signal, by its PID."""
        if self.returncode is None:
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        """
        SIGTERM by PID; SIGKILL to its session after C{timeout} seconds.

        @return: its exit status (C{None} if it never started).
        @raise ServerFailed: it had to be killed.
        """
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise self._failed(f"did not stop on SIGTERM within {timeout} s") from None
        return self.popen.returncode

    async def astop(self, timeout: float = 20.0) -> int | None:
        """L{stop} without blocking the event loop."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while self.popen.poll() is None:
                if loop.time() > deadline:
                    self._kill()
                    raise self._failed(f"did not stop on SIGTERM within {timeout} s")
                await asyncio.sleep(0.05)
        return self.popen.returncode

    def kill(self) -> int:
        """SIGKILL (a crash): by PID, then wait for it; return its status."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait(20)

    def _kill(self) -> None:
        """SIGABRT (its stacks go to its output), then SIGKILL to its session."""
        try:
            os.kill(self.pid, signal.SIGABRT)
            self.popen.wait(3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
