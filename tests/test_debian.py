"""
The Debian package (debian/, packaging/).

L{DebPackageTests} builds the package, installs it, runs the service's
ExecStart as its user, talks to it over wss:// and https://, removes and
purges it: all of it in packaging/test-deb.py, which operators can run by
hand.  It needs root and the build dependencies; it is skipped (with the
reason) when not root, or when dpkg-buildpackage or the build dependencies
are missing, unless C{AHOY_DEB_TEST=1}, which makes those a failure (CI).
C{AHOY_DEB=/path/to.deb} tests a prebuilt package instead of building one.

The other tests check the packaging files themselves, anywhere, in a second.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.trial import unittest

import ahoyconference
from ahoyconference.config import loadConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN = os.path.join(ROOT, "debian")
SCRIPT = os.path.join(ROOT, "packaging", "test-deb.py")


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _unitService() -> dict[str, list[str]]:
    section, values = None, {}
    for line in _read("debian", "ahoyconference.service").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


class PackagingFilesTests(unittest.TestCase):
    """The packaging files agree with each other and with the project."""

    def test_versionMatches(self):
        """debian/changelog's version is the project's (a native package)."""
        first = _read("debian", "changelog").splitlines()[0]
        match = re.match(r"^ahoyconference \(([^)]+)\) ", first)
        self.assertIsNotNone(match, first)
        self.assertEqual(match.group(1), ahoyconference.__version__)

    def test_requirementsPinned(self):
        """
        packaging/requirements.txt pins every install_requires of setup.cfg
        exactly, at a version that satisfies it.
        """
        pins = {}
        for line in _read("packaging", "requirements.txt").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            self.assertEqual(spec.operator, "==", line)
            pins[canonicalize_name(requirement.name)] = spec.version
        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        required = [r for r in parser["options"]["install_requires"].splitlines() if r.strip()]
        self.assertTrue(required)
        for line in required:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            self.assertIn(name, pins, f"{line} is not pinned in packaging/requirements.txt")
            self.assertIn(pins[name], requirement.specifier, f"{name}=={pins[name]} does not satisfy {line}")

    def test_unit(self):
        """The systemd unit: its user, restart policy, sandbox, reload, journal."""
        unit = _unitService()
        self.assertEqual(unit["User"], ["ahoyconference"])
        self.assertEqual(unit["ExecStart"], ["/usr/bin/ahoyconferenced"])
        self.assertEqual(unit["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(unit["Restart"], ["on-failure"])
        for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
            self.assertEqual(unit[key], ["yes"], key)
        self.assertEqual(unit["ProtectSystem"], ["strict"])
        writable = " ".join(unit["ReadWritePaths"]).split()
        self.assertEqual(sorted(writable), ["/var/lib/ahoyconference", "/var/log/ahoyconference"])
        self.assertEqual(unit["StandardOutput"], ["journal"])

    def test_unitVerifies(self):
        """systemd-analyze verify finds nothing to say about the unit."""
        if shutil.which("systemd-analyze") is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        unit = os.path.join(self.mktemp(), "ahoyconference.service")
        os.makedirs(os.path.dirname(unit))
        # The wrapper is not installed here: point ExecStart at an executable that is.
        with open(unit, "w") as f:
            f.write(_read("debian", "ahoyconference.service")
                    .replace("/usr/bin/ahoyconferenced", "/bin/true"))
        result = subprocess.run(["systemd-analyze", "verify", unit], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout), (0, ""))

    def test_wrapper(self):
        """The wrapper execs the venv's twistd with the packaged configuration."""
        text = _read("packaging", "ahoyconferenced")
        self.assertIn("exec /opt/ahoyconference/bin/twistd --nodaemon --pidfile= ", text)
        self.assertIn('ahoyconference --config=/etc/ahoyconference/ahoyconference.toml "$@"', text)

    def test_shellScripts(self):
        """The maintainer scripts and the wrapper are valid POSIX shell with set -e."""
        for path in ("debian/postinst", "debian/prerm", "debian/postrm", "packaging/ahoyconferenced",
                     "packaging/build-deb.sh"):
            full = os.path.join(ROOT, path)
            self.assertTrue(os.access(full, os.X_OK), f"{path} is not executable")
            result = subprocess.run(["sh", "-n", full], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            self.assertEqual((result.returncode, result.stdout), (0, ""), path)
        for path in ("debian/postinst", "debian/prerm", "debian/postrm"):
            text = _read(path)
            self.assertIn("\nset -e\n", text, path)
            self.assertIn("\n#DEBHELPER#\n", text, path)

    def test_conffileListensWithGeneratedCertificate(self):
        """The packaged configuration uses the paths at which the postinst makes the certificate."""
        postinst = _read("debian", "postinst")
        self.assertIn("TLS=/etc/ahoyconference/tls", postinst)
        ports = loadConfig(os.path.join(ROOT, "conf", "ahoyconference.toml")).ports
        self.assertIn("privateKey=/etc/ahoyconference/tls/key.pem", ports[0])
        self.assertIn("certKey=/etc/ahoyconference/tls/cert.pem", ports[0])
        install = _read("debian", "ahoyconference.install")
        self.assertIn("conf/ahoyconference.toml etc/ahoyconference/", install)


def _skipReason() -> str | None:
    """Why the package test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: it installs and purges the ahoyconference package"
    if os.environ.get("AHOY_DEB_TEST") == "1":
        return None
    if os.environ.get("AHOY_DEB_TEST") == "0":
        return "AHOY_DEB_TEST=0: the package test is switched off"
    if not os.environ.get("AHOY_DEB"):
        if shutil.which("dpkg-buildpackage") is None:
            return "dpkg-buildpackage is not installed (set AHOY_DEB_TEST=1 to make this a failure)"
        missing = subprocess.run(["dpkg-checkbuilddeps", os.path.join(DEBIAN, "control")],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if missing.returncode != 0:
            return (f"build dependencies missing: {missing.stdout.strip()} (apt-get build-dep {ROOT}/; "
                    "set AHOY_DEB_TEST=1 to make this a failure)")
    status = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "ahoyconference"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if status.returncode == 0 and status.stdout.strip() not in ("", "un", "pn"):
        return "the ahoyconference package is installed here; this test would purge it"
    return None


def _scriptOptions() -> list[str]:
    """
    Under AHOY_DEB_TEST=1 (CI) the script installs what it lacks (build
    dependencies, lintian) and lintian must run.
    """
    if os.environ.get("AHOY_DEB_TEST") == "1":
        return ["--install-deps", "--require-lintian"]
    return []


class DebPackageTests(unittest.TestCase):
    """Build (or take $AHOY_DEB), install, run, remove, purge: packaging/test-deb.py."""

    def test_buildInstallRunPurge(self):
        reason = _skipReason()
        if reason:
            raise unittest.SkipTest(reason)
        logPath = os.path.abspath("test-deb.log")
        with open(logPath, "w") as out:
            result = subprocess.run([sys.executable, SCRIPT, *_scriptOptions()], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=ROOT, timeout=3600)
        with open(logPath) as f:
            output = f.read()
        lines = output.strip().splitlines()
        self.assertEqual((result.returncode, lines[-1] if lines else ""), (0, "RESULT: ok"),
                         f"packaging/test-deb.py failed ({logPath}):\n{output[-6000:]}")
        for step in ("created and joined", "/metrics: ok", "tls1_1: refused", "tls1_2: accepted",
                     "SIGHUP: the new permanent room can be joined", "apt-get purge"):
            self.assertIn(step, output)
