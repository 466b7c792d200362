"""Start and stop the two servers under test, on loopback, by PID.

 - AhoyConference: ``twistd -n --pidfile= ahoyconference`` on
   ``tcp:PORT:interface=127.0.0.1`` with a bench config (loopback ICE, limits
   off or raised), preloaded with the mlock shim.
 - Janus 1.1.2 (Debian's ``janus``): the janus-bench config from
   ``bench/janus/`` with the HTTP port filled in, preloaded with the
   ``lo_ifaddrs`` and mlock shims.

Every process started here is remembered and stopped by its own PID
(SIGTERM, then SIGKILL after a bounded wait); nothing is killed by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from tests.serverprocess import ServerProcess  # noqa: E402

LAB = os.environ.get("AHOY_BENCH_LAB", "/tmp/ahoy_bench")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
TWISTD = os.path.join(ROOT, ".venv", "bin", "twistd")

AHOY_CONFIG = """\
# AhoyConference bench config: loopback-only media, limits off or raised.
[ice]
host_addresses = ["127.0.0.1"]

[limits]
join_rate = 0
chat_rate = 0
max_connections_per_ip = 0
max_conferences_per_client = 0
max_members_per_conference = 5000
max_members = 20000
max_conferences = 5000
max_send_buffer_bytes = 16777216
max_peer_connections = 0
max_peer_connections_per_member = 0
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_shims() -> dict:
    """Compile the LD_PRELOAD shims (bench/shims/*.c) into LAB; return their paths."""
    os.makedirs(LAB, exist_ok=True)
    out = {}
    for name in ("lo_ifaddrs", "mlock_onfault", "udp_rcvbuf"):
        src = os.path.join(HERE, "shims", name + ".c")
        so = os.path.join(LAB, name + ".so")
        if not os.path.exists(so) or os.path.getmtime(src) > os.path.getmtime(so):
            subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, src, "-ldl"], check=True)
        out[name] = so
    return out


class Proc:
    """A server process we started; stop() ends it by PID."""

    def __init__(self, name: str, popen: subprocess.Popen, url: str, log: str):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.url = url
        self.logPath = log

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, wait: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}:\n"
                               + open(log).read()[-2000:])
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s; see {log}")


def start_ahoy(shims: dict, mlock: bool = True, port: int | None = None,
               extra_config: str = "", timeout: float = 30.0,
               code_root: str | None = None, udp_port: int = 0,
               preload: tuple = ()) -> ServerProcess:
    """twistd -n ahoyconference on 127.0.0.1:PORT with the bench config
    (tests/serverprocess.py, the one launcher of tests and benchmarks).

    C{code_root}: a directory holding another C{ahoyconference/} (and
    C{twisted/plugins/}) to run instead of the project's, e.g. a copy with a
    patch under test applied (it goes first on PYTHONPATH, before the editable
    install's finder).  C{udp_port}: all media on that one UDP port
    (C{--udp-port}; 0: a socket per peer connection).  C{preload}: more
    shims (paths) to LD_PRELOAD, e.g. C{shims["udp_rcvbuf"]} for an A/B of
    larger socket buffers."""
    port = port or free_port()
    env = {}
    if code_root:
        env["PYTHONPATH"] = code_root + os.pathsep + ROOT + (
            os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    libs = ([shims["mlock_onfault"]] if mlock else []) + list(preload)
    if libs:
        env["LD_PRELOAD"] = " ".join(libs)
    proc = ServerProcess.twistd(LAB, AHOY_CONFIG + extra_config, port=port, env=env,
                                command=[TWISTD], name=f"ahoy-{port}",
                                pluginArgs=[f"--udp-port={udp_port}"] if udp_port else [])
    proc.start()
    try:
        proc.waitForPort(timeout)
    except Exception:
        proc.stop()
        raise
    return proc


def start_janus(shims: dict, mlock: bool = True, port: int | None = None,
                timeout: float = 20.0) -> Proc:
    """Debian's janus with bench/janus/*.jcfg (HTTP on 127.0.0.1:PORT, ICE on lo only)."""
    if shutil.which("janus") is None:
        raise RuntimeError("janus is not installed (apt-get install janus)")
    port = port or free_port()
    confdir = os.path.join(LAB, f"janus-conf-{port}")
    os.makedirs(confdir, exist_ok=True)
    for name in os.listdir(os.path.join(HERE, "janus")):
        with open(os.path.join(HERE, "janus", name)) as f:
            text = f.read()
        if name == "janus.transport.http.jcfg":
            text = text.replace("port = 8088", f"port = {port}")
        with open(os.path.join(confdir, name), "w") as f:
            f.write(text)
    log = os.path.join(LAB, f"janus-{port}.log")
    env = dict(os.environ)
    env["LD_PRELOAD"] = shims["lo_ifaddrs"] + (" " + shims["mlock_onfault"] if mlock else "")
    cmd = ["janus", "-C", os.path.join(confdir, "janus.jcfg"), "-F", confdir]
    with open(log, "w") as logf:
        p = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    proc = Proc("janus", p, f"http://127.0.0.1:{port}/janus", log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/janus/info", p, timeout, log)
    except Exception:
        proc.stop()
        raise
    return proc


#: What start_ahoy and start_janus return: both have pid, url, logPath,
#: popen, alive() and stop().
Running = Proc | ServerProcess


def main() -> int:
    """Start one server and wait (for trying things by hand): servers.py ahoy|janus."""
    which = sys.argv[1] if len(sys.argv) > 1 else "ahoy"
    shims = build_shims()
    proc = start_ahoy(shims) if which == "ahoy" else start_janus(shims)
    print(f"{which} pid {proc.pid} url {proc.url} log {proc.logPath}", flush=True)
    try:
        proc.popen.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
