#!/usr/bin/env python3
"""
Build, install, run, remove and purge the Debian package, checking each step.

    sudo .venv/bin/python packaging/test-deb.py [--deb FILE] [--out DIR]
                                                [--install-deps] [--no-lintian]
                                                [--require-lintian] [--force]

Run as root, with a Python that has the ``websockets`` package (the
development venv has it): it talks to the server with the package's client
(``ahoyconference.client``) and runs it with ``tests/serverprocess.py``.
Without --deb (or $AHOY_DEB) it builds the package with
packaging/build-deb.sh first.  Then, on this machine:

 1. lintian --fail-on error on the .deb (in the background, when installed);
 2. apt-get install ./ahoyconference_*.deb: the user, the directories and their
    modes, the generated certificate, the byte-code, the unit (systemd-analyze
    verify);
 3. starts the unit's ExecStart as the unit's User= (systemd need not run),
    with one extra --port on a free loopback port using the configuration's
    certificate, then: CONFERENCE_CREATE + CONFERENCE_JOIN over wss:// checked
    against the generated certificate; GET /metrics over https from 127.0.0.1;
    TLS 1.0/1.1 refused and 1.2/1.3 accepted (openssl s_client, with a control
    s_server proving the client does offer TLS 1.1); SIGHUP with a new
    [[rooms]] entry in the configuration, then a join to that room; a broken
    configuration stops the wrapper with the key and file named; JSON logs
    through AHOYCONFERENCE_TWISTD_OPTS; SIGTERM stops it cleanly;
 4. apt-get remove: the venv and wrapper are gone, the configuration stays;
 5. apt-get purge: nothing is left (user, group, /opt/ahoyconference,
    /etc/ahoyconference, /var/lib/ahoyconference, /var/log/ahoyconference).

--install-deps installs the build dependencies (apt-get build-dep) and lintian
when they are missing.  What this cannot check without systemd running: the
unit's sandbox (ProtectSystem= and friends); systemd-analyze verify checks
the unit's syntax.

It refuses to run if ahoyconference is installed already (it would purge it)
and takes a lock so that two runs on one machine wait for each other.  The
last line is "RESULT: ok" or "RESULT: FAILED: ..."; the exit status says the
same.  Timings of each step are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from ahoyconference.client import SUBPROTOCOL, ProtocolClient  # noqa: E402
from tests.serverprocess import ServerFailed, ServerProcess, freePort  # noqa: E402

PACKAGE = "ahoyconference"
USER = "ahoyconference"
UNIT = "/lib/systemd/system/ahoyconference.service"
CONF = "/etc/ahoyconference/ahoyconference.toml"
TLS = "/etc/ahoyconference/tls"
VENV = "/opt/ahoyconference"
WRAPPER = "/usr/bin/ahoyconferenced"
WANTS = "/etc/systemd/system/multi-user.target.wants/ahoyconference.service"
LEFTOVERS = [VENV, "/etc/ahoyconference", "/var/lib/ahoyconference", "/var/log/ahoyconference",
             WRAPPER, UNIT, WANTS]
LOCK = "/run/lock/ahoyconference-test-deb.lock"
# (unsafe-io: no fsync per file while unpacking; this is a test machine)
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", "-o", "Dpkg::Options::=--force-unsafe-io"]


#: Run by the venv's python as the service user: every compiled module of the
#: bundled wheels loads after dh_strip, and the native code the media path
#: needs works (FFmpeg codecs, DTLS certificates, SRTP, CRC32C).
NATIVE_CHECK = """
import importlib, os, sysconfig
site = sysconfig.get_paths()["purelib"]
bad, count = [], 0
for dirpath, dirs, files in os.walk(site):
    if ".libs" in dirpath or "/test" in dirpath:
        continue
    for name in files:
        if name.endswith(".so"):
            count += 1
            module = os.path.relpath(os.path.join(dirpath, name), site).split(".")[0].replace("/", ".")
            try:
                importlib.import_module(module)
            except Exception as e:
                bad.append(f"{module}: {e!r}")
assert count > 20 and not bad, (count, bad)
import av
for codec, mode in (("vp8", "w"), ("h264", "r"), ("opus", "w")):
    av.CodecContext.create(codec, mode)
from aiortc import RTCCertificate
assert RTCCertificate.generateCertificate().getFingerprints()
from pylibsrtp import Policy, Session
Session(policy=Policy(key=bytes(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
import google_crc32c
assert google_crc32c.value(b"abc") == 910901175
print(count, "compiled modules load")
"""


class Failed(Exception):
    """A check failed; the message says which."""


def log(message: str) -> None:
    print(message, flush=True)


def check(condition, message: str) -> None:
    if not condition:
        raise Failed(message)


def run(cmd, *, timeout=600, check_=True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output (text); fail with it if it fails."""
    env = kwargs.pop("env", None)
    if env is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout, env=env, **kwargs)
    if check_ and result.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited with {result.returncode}:\n{result.stdout[-4000:]}")
    return result


class Steps:
    """Times each step and prints it."""

    def __init__(self):
        self.times: list[tuple[str, float]] = []

    def __call__(self, name):
        steps = self

        class _Step:
            def __enter__(self):
                self.start = time.monotonic()
                log(f"== {name}")

            def __exit__(self, *exc):
                took = time.monotonic() - self.start
                steps.times.append((name, took))
                if exc[0] is None:
                    log(f"   ok ({took:.1f} s)")

        return _Step()


# -- preconditions and build ----------------------------------------------


def installedVersion() -> str | None:
    result = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", PACKAGE], check_=False)
    if result.returncode == 0 and result.stdout[:2] in ("ii", "iF", "iU", "rc", "iH", "hi"):
        return result.stdout.strip()
    return None


def installDeps() -> None:
    """The build dependencies (debian/control) and lintian, from Debian, if missing."""
    missing = run(["dpkg-checkbuilddeps", os.path.join(ROOT, "debian", "control")], check_=False)
    if missing.returncode == 0 and shutil.which("lintian"):
        log("   already installed")
        return
    run(APT[:1] + ["update", "-q"], timeout=900)
    run(APT + ["build-dep", ROOT + "/"], timeout=1800)
    run(APT + ["install", "--no-install-recommends", "lintian"], timeout=1800)


def build(out: str) -> str:
    missing = run(["dpkg-checkbuilddeps", os.path.join(ROOT, "debian", "control")], check_=False)
    check(missing.returncode == 0,
          f"build dependencies missing ({missing.stdout.strip()}); run with --install-deps "
          f"or: apt-get build-dep {ROOT}/")
    result = run(["sh", os.path.join(HERE, "build-deb.sh"), out], timeout=3600)
    lines = result.stdout.strip().splitlines()
    for line in lines[-3:]:
        if line.startswith("built in"):
            log(f"   {line}")
    deb = lines[-1].strip()
    check(deb.endswith(".deb") and os.path.isfile(deb), f"no .deb built:\n{result.stdout[-3000:]}")
    return deb


def startLintian(deb: str, logPath: str, required: bool):
    if shutil.which("lintian") is None:
        check(not required, "lintian is not installed (apt-get install lintian, or --install-deps)")
        log("   lintian is not installed: skipping that check (apt-get install lintian)")
        return None
    return subprocess.Popen(["lintian", "--fail-on", "error", "--display-level", ">=warning", deb],
                            stdout=open(logPath, "w"), stderr=subprocess.STDOUT)


def finishLintian(proc, logPath: str) -> None:
    if proc is None:
        return
    rc = proc.wait(timeout=1800)
    with open(logPath) as f:
        output = f.read()
    counts: dict[str, int] = {}
    for line in output.splitlines():
        m = re.match(r"^([EWIXO]): \S+: (\S+)", line)
        if m:
            key = f"{m.group(1)}: {m.group(2)}"
            counts[key] = counts.get(key, 0) + 1
    for key, n in sorted(counts.items()):
        log(f"   {key} ({n})")
    errors = [line for line in output.splitlines() if line.startswith("E: ")]
    check(rc == 0 and not errors, f"lintian found errors (rc {rc}):\n" + "\n".join(errors[:40]))


# -- after installation -----------------------------------------------------


def mode(path: str) -> tuple[str, str, int]:
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def expectMode(path: str, owner: str, group: str, perms: int) -> None:
    got = mode(path)
    check(got == (owner, group, perms),
          f"{path}: expected {owner}:{group} {perms:04o}, found {got[0]}:{got[1]} {got[2]:04o}")


def asUser(user: str, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] + cmd,
               check_=False, **kwargs)


def checkInstalled() -> None:
    entry = pwd.getpwnam(USER)
    check(entry.pw_uid < 1000, f"{USER} is not a system user (uid {entry.pw_uid})")
    check(entry.pw_dir == "/var/lib/ahoyconference", f"{USER}'s home is {entry.pw_dir}")
    check(entry.pw_shell in ("/usr/sbin/nologin", "/bin/false"), f"{USER}'s shell is {entry.pw_shell}")
    check(grp.getgrgid(entry.pw_gid).gr_name == USER, f"{USER}'s group is not {USER}")
    expectMode("/var/lib/ahoyconference", USER, USER, 0o750)
    expectMode("/var/log/ahoyconference", USER, "adm", 0o2750)
    expectMode(TLS, "root", USER, 0o750)
    expectMode(f"{TLS}/key.pem", "root", USER, 0o640)
    expectMode(f"{TLS}/cert.pem", "root", USER, 0o644)
    expectMode(CONF, "root", USER, 0o640)
    check(os.access(WRAPPER, os.X_OK), f"{WRAPPER} is not executable")
    # The key: readable by the service user, by no other (non-root) user.
    check(asUser(USER, ["cat", f"{TLS}/key.pem"]).returncode == 0, f"{USER} cannot read the key")
    check(asUser("nobody", ["cat", f"{TLS}/key.pem"]).returncode != 0, "nobody can read the key")
    check(asUser("nobody", ["cat", CONF]).returncode != 0, "nobody can read the configuration")
    # The certificate: valid now and for a year, for localhost and 127.0.0.1.
    text = run(["openssl", "x509", "-in", f"{TLS}/cert.pem", "-noout", "-text"]).stdout
    check("DNS:localhost" in text and "IP Address:127.0.0.1" in text,
          f"the certificate does not name localhost and 127.0.0.1:\n{text[:2000]}")
    run(["openssl", "x509", "-in", f"{TLS}/cert.pem", "-noout", "-checkend", str(365 * 86400)])
    # The venv: byte-code and Twisted's plugin cache compiled by the postinst,
    # the interpreter is Debian's.
    site = f"{VENV}/lib/python3.11/site-packages"
    check(os.path.isdir(f"{site}/ahoyconference/__pycache__"), "the postinst compiled no byte-code")
    check(os.path.isfile(f"{site}/twisted/plugins/dropin.cache"), "no Twisted plugin cache")
    check(os.path.realpath(f"{VENV}/bin/python") == os.path.realpath("/usr/bin/python3.11"),
          "the venv does not run Debian's python3.11")
    native = asUser(USER, [f"{VENV}/bin/python", "-c", NATIVE_CHECK], cwd="/")
    check(native.returncode == 0, f"the bundled native code does not work:\n{native.stdout[-3000:]}")
    log(f"   {native.stdout.strip()}")
    version = asUser(USER, [WRAPPER, "--version"], cwd="/")
    check(version.returncode == 0 and re.search(r"ahoyconference \d", version.stdout),
          f"{WRAPPER} --version: {version.stdout}")
    log(f"   {version.stdout.strip()}")
    check(os.path.islink(WANTS), "the unit is not enabled (no multi-user.target.wants link)")
    if shutil.which("systemd-analyze"):
        verify = run(["systemd-analyze", "verify", UNIT], check_=False)
        check(verify.returncode == 0 and not verify.stdout.strip(),
              f"systemd-analyze verify {UNIT}:\n{verify.stdout}")


def unitService() -> dict[str, list[str]]:
    """The [Service] section of the installed unit: key → values."""
    section, values = None, {}
    with open(UNIT) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                values.setdefault(key.strip(), []).append(value.strip())
    return values


def testEndpoint(port: int) -> str:
    """The configuration's TLS endpoint, moved to a loopback port."""
    with open(CONF, "rb") as f:
        ports = tomllib.load(f)["server"]["ports"]
    ssl_ = [p for p in ports if p.startswith("ssl:")]
    check(ssl_, f"the packaged configuration has no ssl: port: {ports}")
    check("/etc/ahoyconference/tls/" in ssl_[0],
          f"the ssl: port does not use the generated certificate: {ssl_[0]}")
    rest = re.sub(r"^ssl:\d+", "", ssl_[0])
    rest = re.sub(r":interface=[^:]*", "", rest)
    return f"ssl:{port}:interface=127.0.0.1{rest}"


def unitServer(workdir: str, name: str, port: int, extraArgs: list[str],
               extraEnv: dict | None = None) -> ServerProcess:
    """
    The unit's ExecStart, run as the unit's User= in the unit's
    WorkingDirectory with the unit's Environment= (tests/serverprocess.py).
    """
    unit = unitService()
    user = unit["User"][-1]
    group = unit.get("Group", [user])[-1]
    check(unit.get("Restart") == ["on-failure"], f"Restart= is {unit.get('Restart')}")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    for assignment in unit.get("Environment", []):
        key, _, value = assignment.strip('"').partition("=")
        env[key] = value
    env.update(extraEnv or {})
    cmd = (["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--no-new-privs",
            "--"] + unit["ExecStart"][-1].split() + extraArgs)
    log(f"   {' '.join(cmd)}")
    return ServerProcess(cmd, port, os.path.join(workdir, f"{name}.log"),
                         cwd=unit.get("WorkingDirectory", ["/"])[-1], env=env, scheme="wss")


def tlsContext() -> ssl.SSLContext:
    """Trusts exactly the generated certificate, and checks the host name."""
    return ssl.create_default_context(cafile=f"{TLS}/cert.pem")


async def _createAndJoin(url: str, conferenceID: str, create: bool) -> dict:
    client = await ProtocolClient.connect(url, ssl=tlsContext(), timeout=10)
    try:
        check(client.ws.subprotocol == SUBPROTOCOL,
              f"the server selected subprotocol {client.ws.subprotocol!r}")
        if create:
            reply = await client.request("CONFERENCE_CREATE_request", conferenceID=conferenceID)
            check(reply.get("messageType") == "CONFERENCE_CREATE_response" and reply.get("status") == 200
                  and reply.get("conferenceID") == conferenceID, f"CONFERENCE_CREATE: {reply}")
        reply = await client.request("CONFERENCE_JOIN_request", conferenceID=conferenceID,
                                     name="deb-test")
        check(reply.get("messageType") == "CONFERENCE_JOIN_response" and reply.get("status") == 200
              and reply.get("conferenceID") == conferenceID and reply.get("memberID"),
              f"CONFERENCE_JOIN: {reply}")
        return reply
    finally:
        await client.close()


def createAndJoin(port: int, conferenceID: str, create: bool = True) -> dict:
    return asyncio.run(_createAndJoin(f"wss://localhost:{port}/", conferenceID, create))


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=tlsContext(),
                                timeout=10) as response:
        check(response.status == 200, f"/metrics: {response.status}")
        check(response.headers.get("Content-Type", "").startswith("text/plain"),
              f"/metrics Content-Type: {response.headers.get('Content-Type')}")
        return response.read().decode()


def metricValue(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    check(m, f"/metrics has no {name}:\n{text[:3000]}")
    return float(m.group(1))


def sClient(port: int, version: str) -> subprocess.CompletedProcess:
    """openssl s_client at one TLS version, willing to use any cipher (SECLEVEL=0)."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}", "-brief"]
    if version in ("tls1", "tls1_1"):
        cmd += ["-cipher", "DEFAULT:@SECLEVEL=0"]
    return run(cmd, check_=False, input="", timeout=30)


def checkTLSVersions(port: int, workdir: str) -> None:
    # Control: the same client command reaches TLS 1.1 with a server that allows it,
    # so a refusal below comes from our server.
    control = freePort()
    key, cert = os.path.join(workdir, "ctl-key.pem"), os.path.join(workdir, "ctl-cert.pem")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ctl",
         "-keyout", key, "-out", cert])
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{control}", "-key", key,
                               "-cert", cert, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                              stdin=subprocess.PIPE,  # s_server quits at the end of its input
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", control), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        result = sClient(control, "tls1_1")
        check(result.returncode == 0 and "TLSv1.1" in result.stdout,
              f"control: openssl s_client -tls1_1 cannot reach a TLS 1.1 server:\n{result.stdout[-2000:]}")
    finally:
        server.kill()
        server.wait()
        server.stdin.close()
    for version, expected in (("tls1", None), ("tls1_1", None), ("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")):
        result = sClient(port, version)
        if expected is None:
            check(result.returncode != 0 and not re.search(r"Protocol version: TLSv1(\.1)?$",
                                                          result.stdout, re.M),
                  f"the server accepted {version}:\n{result.stdout[-2000:]}")
        else:
            check(result.returncode == 0 and f"Protocol version: {expected}" in result.stdout,
                  f"the server refused {version}:\n{result.stdout[-2000:]}")
        log(f"   {version}: {'refused' if expected is None else 'accepted'}")


def exercise(workdir: str) -> None:
    port = freePort()
    server = unitServer(workdir, "server", port, [f"--port={testEndpoint(port)}"]).start()
    try:
        server.waitForPort()
        room = f"deb-test-{uuid.uuid4().hex[:8]}"
        reply = createAndJoin(port, room)
        log(f"   wss://localhost:{port}/: created and joined {room} (moderator={reply.get('moderator')})")
        text = metrics(port)
        check(metricValue(text, "ahoy_conferences") >= 1, "ahoy_conferences is 0 after a create")
        check(metricValue(text, 'ahoy_joins_total{role="moderator"}') >= 1,
              "ahoy_joins_total counted no join")
        log("   https://127.0.0.1/metrics: ok")
        checkTLSVersions(port, workdir)

        # SIGHUP: a permanent room added to the configuration appears.
        with open(CONF, "a") as f:
            f.write('\n[[rooms]]\nid = "deb-reload-room"\nname = "Added by packaging/test-deb.py"\n')
        server.signal(signal.SIGHUP)
        server.waitForOutput(r"configuration reloaded: 1 permanent room")
        createAndJoin(port, "deb-reload-room", create=False)
        log("   SIGHUP: the new permanent room can be joined")
        check(server.alive(), "the server died after SIGHUP")

        # The logs are text on stdout (the journal), without tracebacks.
        out = server.output()
        check("Traceback" not in out and "Unhandled" not in out, f"errors in the server log:\n{out[-4000:]}")
        rc = server.stop(30)
        check(rc == 0, f"the server exited with {rc} on SIGTERM:\n{server.output()[-3000:]}")
        log(f"   SIGTERM: exited with 0; {len(out.splitlines())} log lines")
    finally:
        server.stop()

    # A broken configuration: the wrapper stops and names the key and the file.
    broken = os.path.join(workdir, "broken.toml")
    with open(broken, "w") as f:
        f.write("[limits]\nmax_members = -3\n")
    os.chmod(workdir, 0o755)
    os.chmod(broken, 0o644)
    result = asUser(USER, [WRAPPER, f"--config={broken}"], timeout=60)
    check(result.returncode != 0 and broken in result.stdout and "max_members" in result.stdout,
          f"a broken configuration: exit {result.returncode}:\n{result.stdout[-2000:]}")
    log(f"   a broken configuration: {result.stdout.strip().splitlines()[-1]}")

    # JSON logs through the wrapper's AHOYCONFERENCE_TWISTD_OPTS.
    port = freePort()
    server = unitServer(workdir, "server-json", port, [f"--port={testEndpoint(port)}"],
                        {"AHOYCONFERENCE_TWISTD_OPTS": "--logger=ahoyconference.logfmt.json"}).start()
    try:
        server.waitForPort()
        createAndJoin(port, "deb-json-room")
    finally:
        server.stop()
    lines = [line for line in server.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise Failed(f"a log line is not JSON: {line!r}")
    check(records and all({"time", "level", "namespace", "message"} <= set(r) for r in records),
          f"JSON log records lack keys: {records[:3]}")
    log(f"   JSON logs: {len(records)} records")


# -- removal ----------------------------------------------------------------------


def checkRemoved() -> None:
    for path in (VENV, WRAPPER, UNIT):
        check(not os.path.lexists(path), f"{path} is left after remove")
    check(os.path.isfile(CONF), "remove deleted the configuration (a conffile)")
    check(os.path.isfile(f"{TLS}/cert.pem"), "remove deleted the certificate")
    pwd.getpwnam(USER)


def checkPurged() -> None:
    left = [p for p in LEFTOVERS if os.path.lexists(p)]
    check(not left, f"left after purge: {left}")
    for db, name in ((pwd.getpwnam, "user"), (grp.getgrnam, "group")):
        try:
            db(USER)
        except KeyError:
            continue
        raise Failed(f"the {name} {USER} is left after purge")
    status = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE], check_=False)
    check(status.returncode != 0 or status.stdout.strip() in ("", "un", "pn"),
          f"dpkg still knows {PACKAGE}: {status.stdout!r}")


# -- main ------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", default=os.environ.get("AHOY_DEB"),
                        help="a built .deb to test (default: $AHOY_DEB, else build one)")
    parser.add_argument("--out", help="where to build (default: a new temporary directory)")
    parser.add_argument("--install-deps", action="store_true",
                        help="apt-get build-dep the package and install lintian first")
    parser.add_argument("--no-lintian", action="store_true", help="skip lintian")
    parser.add_argument("--require-lintian", action="store_true",
                        help="fail if lintian is not installed (default: skip it then)")
    parser.add_argument("--force", action="store_true",
                        help="even if ahoyconference is installed already (it will be purged)")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        log("RESULT: FAILED: must run as root (installs and purges a system package)")
        return 2
    try:
        import websockets  # noqa: F401
    except ImportError:
        log(f"RESULT: FAILED: {sys.executable} has no websockets; use the development venv's python")
        return 2

    workdir = tempfile.mkdtemp(prefix="ahoy-test-deb-")
    lockFile = open(LOCK, "w")
    log(f"waiting for {LOCK} ..." if not _tryLock(lockFile) else f"working in {workdir}")
    fcntl.flock(lockFile, fcntl.LOCK_EX)
    step = Steps()
    lintian = None
    installed = False
    try:
        present = installedVersion()
        if present and not args.force:
            raise Failed(f"{PACKAGE} is installed ({present}): this test would purge it; "
                         "use --force to allow that")
        if args.install_deps:
            with step("install the build dependencies and lintian"):
                installDeps()
        if args.deb:
            deb = os.path.abspath(args.deb)
            check(os.path.isfile(deb), f"no such file: {deb}")
        else:
            with step("build the package (packaging/build-deb.sh)"):
                deb = build(args.out or os.path.join(workdir, "build"))
        log(f"   {deb} ({os.path.getsize(deb) / 1e6:.0f} MB)")
        if not args.no_lintian:
            lintian = startLintian(deb, os.path.join(workdir, "lintian.log"), args.require_lintian)
        with step("apt-get install"):
            if present:
                run(APT + ["purge", PACKAGE], timeout=900)
            installed = True
            run(APT + ["install", deb], timeout=900)
        with step("check the installation"):
            checkInstalled()
        with step("run the service's ExecStart as its user"):
            exercise(workdir)
        with step("apt-get remove"):
            run(APT + ["remove", PACKAGE], timeout=900)
            checkRemoved()
        with step("apt-get purge"):
            run(APT + ["purge", PACKAGE], timeout=900)
            installed = False
            checkPurged()
        if lintian is not None:
            with step("lintian --fail-on error"):
                finishLintian(lintian, os.path.join(workdir, "lintian.log"))
    except (Failed, ServerFailed, subprocess.TimeoutExpired, OSError) as e:
        log(f"   FAILED: {e}")
        if lintian is not None and lintian.poll() is None:
            lintian.kill()
        if installed:
            run(APT + ["purge", PACKAGE], check_=False, timeout=900)
        log(f"(logs kept in {workdir})")
        log(f"RESULT: FAILED: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 1
    finally:
        fcntl.flock(lockFile, fcntl.LOCK_UN)
        lockFile.close()
    for name, took in step.times:
        log(f"{took:7.1f} s  {name}")
    log(f"{sum(t for _, t in step.times):7.1f} s  in all")
    shutil.rmtree(workdir, ignore_errors=True)
    log("RESULT: ok")
    return 0


def _tryLock(lockFile) -> bool:
    try:
        fcntl.flock(lockFile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
