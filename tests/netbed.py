"""
A network test bed: Linux network namespaces that look like the networks
members really sit on (docs/operations.md, "What each member needs from the
network"), made and torn down by the tests themselves, as root.

::

                          "the internet" (namespace inet, bridge br0, 203.0.113.0/24)
                 203.0.113.2 = the test's own vantage point (WebSocket clients, /metrics)
      +----------------+----------------+-------------------+
      |                |                |                   |
   dc: 203.0.113.10   rA: .21 NAT     rB: .22 NAT        rO: .23 NAT + firewall
   server (twistd)     | cable          | cable             | veth
   coturn 203.0.113.11 homeA            homeB               office
                       192.0.2.10/25    192.0.2.130/25      198.51.100.10/24

- C{dc}, the data centre: the server under test (a C{twistd} subprocess
  started with C{ip netns exec}) on 203.0.113.10 and coturn (C{turnserver},
  C{use-auth-secret}, its own relay port range) on 203.0.113.11.
- C{homeA}, C{homeB}: homes behind masquerading routers (C{rA}, C{rB}:
  C{iptables} MASQUERADE, only replies come back in); each home is joined to
  its router by a user-space cable (L{tests.cable}: loss, delay, jitter and
  rate changeable while it runs, since this kernel has no C{netem}).
- C{office}: a locked-down office behind C{rO}, whose firewall lets out
  nothing but TCP to the TURN server's port and to the server's web port.

Only documentation addresses (RFC 5737), no default route in any namespace
(each LAN has a route to 203.0.113.0/24 only), nothing attached to the
host's namespace: nothing can leave the machine.  L{NetBed.close} removes
every namespace, process and TAP device even after a failure (it is safe to
call on a half-built bed) and then checks that the host's interfaces,
namespaces and iptables rules are as they were.

C{python -m tests.netbed [WORKDIR]} (as root) builds the bed and keeps it
until Ctrl-C, for experiments and benchmarks: L{Cable} (or the control
socket directly) changes a home's loss, delay, jitter and rate while it runs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.cable import setns

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"

INTERNET = "203.0.113.0/24"
VANTAGE = "203.0.113.2"
SERVER_IP = "203.0.113.10"
TURN_IP = "203.0.113.11"
HTTP_PORT = 8080
TURN_PORT = 3478
TURN_RELAY_PORTS = (49160, 49259)

#: role -> (router role, router's WAN address, LAN prefix length, router LAN, member address)
LANS = {
    "homeA": ("rA", "203.0.113.21", 25, "192.0.2.1", "192.0.2.10"),
    "homeB": ("rB", "203.0.113.22", 25, "192.0.2.129", "192.0.2.130"),
    "office": ("rO", "203.0.113.23", 24, "198.51.100.1", "198.51.100.10"),
}
CABLED = ("homeA", "homeB")
ROLES = ("inet", "dc", "rA", "homeA", "rB", "homeB", "rO", "office")


def missing() -> str | None:
    """Why the bed cannot be built here (one line), or C{None}."""
    if os.geteuid() != 0:
        return "the network test bed needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "iptables-save", "turnserver"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install iproute2 iptables coturn)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no TAP devices for the cables)"
    return None


def _run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def hostState() -> dict:
    """What the bed must leave as it found: the host's links, namespaces, rules."""
    links = sorted(re.findall(r"^\d+: ([^:@]+)", _run("ip", "-o", "link", "show"), re.M))
    rules = [line for line in _run("iptables-save").splitlines() if not line.startswith("#")]
    # Packet counters ("[12:345]") change by themselves; the rules must not.
    rules = [re.sub(r"\[\d+:\d+\]", "", line) for line in rules]
    netns = sorted(line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line)
    # Another process's bed (another test run or a benchmark on this machine)
    # comes and goes by itself: only this process's namespaces count.
    own = f"ahoynb{os.getpid()}-"
    netns = [n for n in netns if not n.startswith("ahoynb") or n.startswith(own)]
    return {"links": links, "iptables": rules, "netns": netns}


class Cable:
    """The control socket of one running L{tests.cable} process."""

    def __init__(self, path: Path, process: subprocess.Popen):
        self.path = path
        self.process = process

    def _ask(self, request: dict) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.path))
            s.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def set(self, **directions: dict) -> dict:
        """Change settings, e.g. C{set(up={"loss": 0.03}, down={"delay": 0.04})}."""
        return self._ask({"set": directions})

    def stats(self) -> dict:
        """Settings and counters of both directions."""
        return self._ask({"stats": True})


class NetBed:
    """
    The whole bed: build it with L{start}, take it down with L{close}.

    @ivar workdir: configuration files, logs and control sockets.
    @ivar secret: coturn's shared secret (also in the server's secret file).
    """

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"ahoynb{os.getpid()}"
        self.created: list[str] = []            # namespaces, in creation order
        self.inodes: dict[str, int] = {}        # namespace -> inode (to find stragglers)
        self.processes: dict[str, subprocess.Popen] = {}
        self.cables: dict[str, Cable] = {}
        self.logs: dict[str, Path] = {}
        self.secret = "turn-" + secrets.token_hex(16)
        self.before: dict | None = None
        self.url = f"ws://{SERVER_IP}:{HTTP_PORT}/"
        self.http = f"http://{SERVER_IP}:{HTTP_PORT}/"

    # -- names and commands -------------------------------------------------

    def ns(self, role: str) -> str:
        """The namespace's real name (unique to this process)."""
        return f"{self.prefix}-{role}"

    def ip(self, role: str, *argv: str) -> str:
        """C{ip -n NS …}."""
        return _run("ip", "-n", self.ns(role), *argv)

    def exec(self, role: str, *argv: str, check: bool = True) -> str:
        """Run a command inside a namespace; its stdout."""
        return _run("ip", "netns", "exec", self.ns(role), *argv, check=check)

    def popen(self, name: str, role: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process inside a namespace; the bed stops it in L{close}."""
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        kwargs.setdefault("stdout", open(log, "ab"))
        kwargs.setdefault("stderr", subprocess.STDOUT)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], cwd=ROOT,
                             start_new_session=True, **kwargs)
        self.processes[name] = p
        return p

    # -- building -----------------------------------------------------------

    def start(self, coturn: bool = True, server: bool = True) -> NetBed:
        """
        Build everything; on any failure, tear down what was built and raise.

        @param coturn: start coturn in the data centre.
        @param server: start our server there (a benchmark may start another
            SFU in C{dc} instead, with L{popen}).
        """
        try:
            self.before = hostState()
            self._namespaces()
            self._internet()
            for role in LANS:
                self._lan(role)
            self._firewalls()
            if coturn:
                self._coturn()
            if server:
                self._server()
        except BaseException:
            self.close()
            raise
        return self

    def _namespaces(self) -> None:
        for role in ROLES:
            name = self.ns(role)
            _run("ip", "netns", "add", name)
            self.created.append(name)
            self.inodes[name] = os.stat(f"/run/netns/{name}").st_ino
            self.ip(role, "link", "set", "lo", "up")

    def _internet(self) -> None:
        self.ip("inet", "link", "add", "br0", "type", "bridge")
        self.ip("inet", "addr", "add", f"{VANTAGE}/24", "dev", "br0")
        self.ip("inet", "link", "set", "br0", "up")
        wan = {"dc": [SERVER_IP, TURN_IP]}
        wan.update({router: [address] for router, address, *_ in LANS.values()})
        for role, addresses in wan.items():
            port = f"p-{role}"
            self.ip("inet", "link", "add", port, "type", "veth", "peer", "name", "wan0",
                    "netns", self.ns(role))
            self.ip("inet", "link", "set", port, "master", "br0", "up")
            for address in addresses:
                self.ip(role, "addr", "add", f"{address}/24", "dev", "wan0")
            self.ip(role, "link", "set", "wan0", "up")

    def _lan(self, role: str) -> None:
        router, _, length, gateway, address = LANS[role]
        if role in CABLED:
            control = self.workdir / f"cable-{role}.sock"
            if control.exists():
                control.unlink()
            p = self.popen(f"cable-{role}", role, [
                sys.executable, str(ROOT / "tests" / "cable.py"), "--home-tap", "eth0",
                "--router-netns", self.ns(router), "--router-tap", "lan0",
                "--control", str(control)], stdout=subprocess.PIPE, stderr=None)
            line = p.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"the cable of {role} did not start: {line!r}")
            self.cables[role] = Cable(control, p)
        else:
            self.ip(router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
                    "netns", self.ns(role))
        self.ip(router, "addr", "add", f"{gateway}/{length}", "dev", "lan0")
        self.ip(router, "link", "set", "lan0", "up")
        self.ip(role, "addr", "add", f"{address}/{length}", "dev", "eth0")
        self.plug(role)
        self.exec(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def _firewalls(self) -> None:
        for role, (router, *_) in LANS.items():
            def rule(*argv, router=router):
                self.exec(router, "iptables", *argv)

            rule("-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
            rule("-P", "FORWARD", "DROP")
            rule("-A", "FORWARD", "-i", "wan0", "-o", "lan0", "-m", "conntrack",
                 "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
            if role == "office":
                # Nothing but TCP to the TURN server and to the web server's port.
                for address, port in ((TURN_IP, TURN_PORT), (SERVER_IP, HTTP_PORT)):
                    rule("-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-p", "tcp",
                         "-d", address, "--dport", str(port), "-j", "ACCEPT")
            else:
                rule("-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-j", "ACCEPT")

    def _coturn(self) -> None:
        low, high = TURN_RELAY_PORTS
        conf = self.workdir / "turnserver.conf"
        conf.write_text("\n".join([
            f"listening-ip={TURN_IP}", f"relay-ip={TURN_IP}", f"listening-port={TURN_PORT}",
            f"min-port={low}", f"max-port={high}",
            "use-auth-secret", f"static-auth-secret={self.secret}", "realm=netbed.example",
            "no-cli", "no-tls", "no-dtls", "fingerprint", "no-multicast-peers",
            "no-software-attribute", "simple-log",
            f"userdb={self.workdir / 'turndb'}", f"pidfile={self.workdir / 'turnserver.pid'}",
            "",
        ]))
        conf.chmod(0o600)
        self.popen("coturn", "dc", ["turnserver", "-c", str(conf), "--log-file=stdout"])
        self.waitTCP(TURN_IP, TURN_PORT, "coturn")

    def _server(self) -> None:
        secretFile = self.workdir / "turn-secret"
        secretFile.write_text(self.secret + "\n")
        secretFile.chmod(0o600)
        config = self.workdir / "ahoyconference.toml"
        config.write_text(f"""\
[server]
ports = ["tcp:{HTTP_PORT}:interface={SERVER_IP}"]
log_level = "info"

[limits]
join_rate = 0.0
chat_rate = 0.0
max_connections_per_ip = 0
max_conferences_per_client = 0

[ice]
host_addresses = ["{SERVER_IP}"]

[ice.turn]
urls = ["turn:{TURN_IP}:{TURN_PORT}?transport=udp", "turn:{TURN_IP}:{TURN_PORT}?transport=tcp"]
secret_file = "{secretFile}"
ttl = 600

[metrics]
allow = ["{VANTAGE}"]
""")
        twistd = Path(sys.executable).parent / "twistd"
        self.popen("server", "dc", [str(twistd), "--nodaemon", "--pidfile=", "ahoyconference",
                                    f"--config={config}"])
        self.waitTCP(SERVER_IP, HTTP_PORT, "the server")

    def plug(self, role: str) -> None:
        """(Re)connect a member's link: up, with its route to the internet."""
        router, _, _, gateway, _ = LANS[role]
        self.ip(role, "link", "set", "eth0", "up")
        self.ip(role, "route", "replace", INTERNET, "via", gateway, "dev", "eth0")

    def pull(self, role: str) -> None:
        """Pull a member's cable: its link goes down (no FIN, no ICE goodbye)."""
        self.ip(role, "link", "set", "eth0", "down")

    # -- using it -----------------------------------------------------------

    def socket(self, role: str, kind: int = socket.SOCK_STREAM, bind=None, connect=None,
               timeout: float = 5.0) -> socket.socket:
        """
        A socket made inside a namespace (by a short-lived thread that enters
        it with setns(2); the socket stays in that namespace), optionally
        bound and connected there.
        """
        result: dict = {}

        def make():
            try:
                setns(f"/run/netns/{self.ns(role)}")
                s = socket.socket(socket.AF_INET, kind)
                s.settimeout(timeout)
                if bind is not None:
                    s.bind(bind)
                if connect is not None:
                    s.connect(connect)
                result["socket"] = s
            except BaseException as e:
                result["error"] = e

        thread = threading.Thread(target=make, name=f"netns-{role}")
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["socket"]

    def waitTCP(self, host: str, port: int, what: str, timeout: float = 30.0) -> None:
        """Wait until C{what} accepts TCP connections (seen from the internet)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.socket("inet", connect=(host, port), timeout=1).close()
                return
            except OSError as e:
                error = e
            for name, p in self.processes.items():
                if p.poll() is not None and not name.startswith("cable"):
                    raise RuntimeError(f"{name} exited ({p.returncode}): "
                                       f"{self.logTail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} does not accept connections on {host}:{port}: {error}")
            time.sleep(0.2)

    def logTail(self, name: str, lines: int = 20) -> str:
        """The end of a process's log."""
        path = self.logs.get(name)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict[str, float]:
        """The server's /metrics, read from the internet: C{{'name{labels}': value}}."""
        s = self.socket("inet", connect=(SERVER_IP, HTTP_PORT))
        try:
            s.sendall(f"GET /metrics HTTP/1.0\r\nHost: {SERVER_IP}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        finally:
            s.close()
        head, _, body = data.decode().partition("\r\n\r\n")
        if not head.startswith("HTTP/1.") or " 200 " not in head.splitlines()[0]:
            raise AssertionError(f"/metrics: {head.splitlines()[:1]}")
        values = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def chromium(self, role: str) -> str:
        """A Chromium executable (wrapper script) that runs inside the namespace."""
        path = self.workdir / f"chromium-{role}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.ns(role)} {CHROMIUM} "$@"\n')
        path.chmod(0o755)
        return str(path)

    # -- tearing down ------------------------------------------------------

    def close(self) -> list[str]:
        """
        Stop every process, remove every namespace (with its links, cables'
        TAP devices and iptables rules), and compare the host with how it
        was.  Safe to call twice or on a half-built bed.

        @return: what is not as it was (empty when all is well).
        """
        for p in reversed(list(self.processes.values())):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.processes.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
            if p.stdout is not None:
                p.stdout.close()
        self._killStragglers()
        for name in reversed(self.created):
            _run("ip", "netns", "del", name, check=False)
        self.created.clear()
        self.processes.clear()
        if self.before is None:
            return []
        after = hostState()
        problems = [f"host {key} changed: {self.before[key]} -> {after[key]}"
                    for key in self.before if after[key] != self.before[key]]
        self.before = None
        return problems

    def _killStragglers(self) -> None:
        """
        Anything still inside one of our namespaces (a Chromium whose test
        died before closing it) was started by this bed: kill it, found by
        the namespace's inode.
        """
        ours = set(self.inodes.values())
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                inode = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if inode in ours:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def main(argv: list[str]) -> None:
    """
    C{python -m tests.netbed [WORKDIR]}, as root: build the bed, print how to
    reach it, keep it until Ctrl-C (or SIGTERM), take it down.
    """
    why = missing()
    if why:
        raise SystemExit(f"tests.netbed: {why}")
    bed = NetBed(Path(argv[0]) if argv else Path.cwd() / "netbed").start()
    try:
        print(f"server {bed.http} (ws {bed.url}), coturn {TURN_IP}:{TURN_PORT}, "
              f"logs and configuration in {bed.workdir}")
        for role in ROLES:
            print(f"  {role:7} ip netns exec {bed.ns(role)} ...")
        for role, cable in bed.cables.items():
            print(f"  cable of {role}: {cable.path} (tests/cable.py: one JSON object a line)")
        print("Ctrl-C takes it down.")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        problems = bed.close()
        print("taken down" + (f"; not as it was: {problems}" if problems else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
