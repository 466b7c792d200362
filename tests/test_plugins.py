# -*- test-case-name: tests.test_plugins -*-
"""
Policy plugins: discovery with C{twisted.plugin.getPlugins} (the shipped
ones, a drop-in directory on the path, the documented example), the
C{token} and C{allowlist} plugins, and how the server survives a policy
that is slow or broken.  End-to-end tests use the real server on a loopback
socket with real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import textwrap
from contextlib import redirect_stderr, redirect_stdout

from twisted.internet import defer, task, utils
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ahoyconference import plugins, tokens
from ahoyconference.config import Config, Limits, parseConfig
from ahoyconference.interfaces import (
    Action,
    ClientInfo,
    ConferenceSettings,
    IConferencePolicy,
    IPolicyPlugin,
    ProtocolError,
    Role,
)
from ahoyconference.plugins.allowlist_policy import AllowlistPolicy, addressIn, allowlistPolicyPlugin
from ahoyconference.plugins.token_policy import TokenPolicy, tokenPolicyPlugin
from ahoyconference.policy import PasswordPolicy, availablePolicies, loadPolicy
from tests.helpers import Client, Server, asyncTest, testConfig
from tests.test_policy import keepPluginDirsClean

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "docs", "examples")
EXAMPLE = os.path.join(EXAMPLES, "ahoyconference", "plugins", "webinar_policy.py")
SECRET = "test-secret-0123456789-abcdefghijklmnop"
NOW = 1_700_000_000.0
CLIENT = ClientInfo(ip="127.0.0.1")


def onPath(testCase, directory: str):
    """
    Put a directory on C{sys.path} for one test; afterwards take it (and the
    C{ahoyconference.plugins} path entry and modules it brought) away again,
    and remove any C{dropin.cache} the test made there or in the package.

    @return: a function doing that cleaning now (it runs again, harmlessly,
        after the test).
    """
    directory = os.path.abspath(directory)
    pluginDir = os.path.join(directory, "ahoyconference", "plugins")
    cleanCaches = keepPluginDirsClean(testCase, pluginDir)
    modulesBefore = set(sys.modules)
    sys.path.append(directory)

    def restore():
        while directory in sys.path:
            sys.path.remove(directory)
        while pluginDir in plugins.__path__:
            plugins.__path__.remove(pluginDir)
        for name in set(sys.modules) - modulesBefore:
            if name.startswith("ahoyconference.plugins."):
                del sys.modules[name]
        cleanCaches()

    testCase.addCleanup(restore)
    testCase.patch(sys, "dont_write_bytecode", True)  # no __pycache__ left in docs/
    return restore


def dropInDirectory(testCase, modules: dict[str, str]) -> str:
    """
    A temporary directory with C{ahoyconference/plugins/<name>.py} files
    (no C{__init__.py}, as an operator would make it), removed afterwards.
    """
    top = tempfile.mkdtemp(prefix="ahoy-plugins-")
    testCase.addCleanup(shutil.rmtree, top, True)
    pluginDir = os.path.join(top, "ahoyconference", "plugins")
    os.makedirs(pluginDir)
    for name, source in modules.items():
        with open(os.path.join(pluginDir, name + ".py"), "w") as f:
            f.write(textwrap.dedent(source))
    return top


MYPLUGIN = '''
    """A drop-in policy plugin for the discovery tests."""

    from zope.interface import implementer

    from ahoyconference.interfaces import IPolicyPlugin
    from ahoyconference.policy import PasswordPolicy


    class MyPolicy(PasswordPolicy):
        name = "{name}"


    @implementer(IPolicyPlugin)
    class MyPlugin:
        name = "{name}"
        description = "A test plugin."

        def makePolicy(self, options, reactor):
            return MyPolicy()


    plugin = MyPlugin()
'''


class DiscoveryTests(unittest.TestCase):
    """Policies are found with C{getPlugins} in every C{ahoyconference/plugins}."""

    def test_dropInDirectoryOnSysPath(self):
        """
        A directory put on C{sys.path} holding C{ahoyconference/plugins/myplugin.py}
        contributes its plugin; afterwards nothing of it is left behind.
        """
        keepPluginDirsClean(self)
        top = dropInDirectory(self, {"myplugin_a": MYPLUGIN.format(name="mine-a")})
        pluginDir = os.path.join(top, "ahoyconference", "plugins")
        self.assertNotIn("mine-a", availablePolicies())
        restore = onPath(self, top)
        found = availablePolicies()
        self.assertIn("mine-a", found)
        self.assertIn("token", found)
        self.assertTrue(verifyObject(IPolicyPlugin, found["mine-a"]))
        self.assertTrue(IPlugin.providedBy(found["mine-a"]))
        policy = loadPolicy("mine-a", {}, task.Clock())
        self.assertTrue(verifyObject(IConferencePolicy, policy))
        self.assertEqual(policy.name, "mine-a")
        self.assertTrue(os.path.exists(os.path.join(pluginDir, "dropin.cache")))
        restore()
        self.assertNotIn(top, sys.path)
        self.assertNotIn(pluginDir, plugins.__path__)
        self.assertNotIn("ahoyconference.plugins.myplugin_a", sys.modules)
        self.assertFalse(os.path.exists(os.path.join(pluginDir, "dropin.cache")))
        self.assertNotIn("mine-a", availablePolicies())

    def test_brokenDropInIsLoggedAndSkipped(self):
        """A plugin module that fails to import is logged; the others still load."""
        top = dropInDirectory(self, {
            "myplugin_b": MYPLUGIN.format(name="mine-b"),
            "broken_b": "raise RuntimeError('broken drop-in')\n",
        })
        onPath(self, top)
        found = availablePolicies()
        self.assertIn("mine-b", found)
        self.assertIn("token", found)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_pythonPath(self):
        """
        The operator's way: a directory named in C{PYTHONPATH} is searched
        by a freshly started server process.
        """
        top = dropInDirectory(self, {"myplugin_c": MYPLUGIN.format(name="mine-c")})
        keepPluginDirsClean(self)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, top]),
                   PYTHONDONTWRITEBYTECODE="1")
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-c", "from ahoyconference.policy import availablePolicies;"
                   "print(' '.join(sorted(availablePolicies())))"],
            env=env, path=REPO)
        self.assertEqual(code, 0, err)
        self.assertTrue({b"allowlist", b"mine-c", b"password", b"token"} <= set(out.split()), out)

    def test_unknownPolicyStopsStartUp(self):
        """C{buildService} with an unknown policy exits naming the known ones."""
        from ahoyconference.tap import buildService

        keepPluginDirsClean(self)
        e = self.assertRaises(SystemExit, buildService, Config(policy_name="nope"), task.Clock())
        self.assertIn("unknown policy 'nope'", str(e.code))
        for name in ("allowlist", "password", "token"):
            self.assertIn(name, str(e.code))

    def test_badOptionsStopStartUp(self):
        """C{buildService} with options the plugin refuses exits naming the key."""
        from ahoyconference.tap import buildService

        keepPluginDirsClean(self)
        config = parseConfig({"policy": {"name": "token", "secert": SECRET}})
        e = self.assertRaises(SystemExit, buildService, config, task.Clock())
        self.assertIn("[policy] secert", str(e.code))

    def test_pluginMakesNoPolicy(self):
        """A plugin whose C{makePolicy} returns something else is a ValueError, not a crash."""
        top = dropInDirectory(self, {"myplugin_d": MYPLUGIN.format(name="mine-d").replace(
            "return MyPolicy()", "return object()")})
        onPath(self, top)
        e = self.assertRaises(ValueError, loadPolicy, "mine-d", {}, task.Clock())
        self.assertIn("not an IConferencePolicy", str(e))

    def test_commandLine(self):
        """C{--policy=NAME} overrides C{[policy] name}."""
        from ahoyconference.tap import Options

        options = Options()
        options.parseOptions(["--policy", "allowlist"])
        self.assertEqual(options["configuration"].policy_name, "allowlist")


class ExampleTests(unittest.TestCase):
    """The example of docs/plugins.md is a working plugin, shown whole in the doc."""

    def setUp(self):
        onPath(self, EXAMPLES)

    def test_discovered(self):
        """Its directory on the path, the example is found by its name."""
        plugin = availablePolicies()["webinar"]
        self.assertTrue(verifyObject(IPolicyPlugin, plugin))
        policy = loadPolicy("webinar", {}, task.Clock())
        self.assertTrue(verifyObject(IConferencePolicy, policy))
        self.assertEqual(policy.name, "webinar")
        conference = ConferenceSettings("room", "room")
        self.assertFalse(policy.mayRequest(CLIENT, Role.LISTENER, Action.CHAT, conference))
        self.assertTrue(policy.mayRequest(CLIENT, Role.LISTENER, Action.SUBSCRIBE, conference))
        self.assertTrue(policy.mayRequest(CLIENT, Role.SPEAKER, Action.CHAT, conference))
        self.assertFalse(policy.mayRequest(CLIENT, Role.SPEAKER, Action.KICK, conference))
        self.assertIs(policy.roleFor(CLIENT, conference, "a", ""), Role.MODERATOR)

    def test_options(self):
        """C{chat_role} is honoured; anything else is refused naming the key."""
        policy = loadPolicy("webinar", {"chat_role": "moderator"}, task.Clock())
        conference = ConferenceSettings("room", "room")
        self.assertFalse(policy.mayRequest(CLIENT, Role.SPEAKER, Action.CHAT, conference))
        self.assertTrue(policy.mayRequest(CLIENT, Role.MODERATOR, Action.CHAT, conference))
        e = self.assertRaises(ValueError, loadPolicy, "webinar", {"chat_role": "boss"}, None)
        self.assertIn("[policy] chat_role", str(e))
        e = self.assertRaises(ValueError, loadPolicy, "webinar", {"colour": "red"}, None)
        self.assertIn("[policy] colour", str(e))

    def test_docShowsTheFile(self):
        """docs/plugins.md contains the example file, unchanged, and it is short."""
        with open(EXAMPLE, encoding="utf-8") as f:
            source = f.read()
        with open(os.path.join(REPO, "docs", "plugins.md"), encoding="utf-8") as f:
            doc = f.read()
        self.assertIn("```python\n" + source + "```\n", doc)
        self.assertLess(len(source.splitlines()), 40)


class TokenFormatTests(unittest.TestCase):
    """L{ahoyconference.tokens}: minting and checking."""

    def test_roundTrip(self):
        """A minted token gives back its conference, role, expiry and name."""
        token = tokens.mint(SECRET, "room", "speaker", NOW + 60, name="Alice")
        invite = tokens.verify(SECRET, token, NOW)
        self.assertEqual(invite, tokens.Invite("room", Role.SPEAKER, NOW + 60, "Alice"))
        invite = tokens.verify(SECRET, tokens.mint(SECRET, "room", Role.LISTENER, NOW + 1), NOW)
        self.assertEqual((invite.role, invite.name), (Role.LISTENER, None))

    def test_isAJWT(self):
        """The token is an HS256 JWT whose claims any JWT library reads."""
        header, payload, _ = tokens.mint(SECRET, "r", "moderator", NOW + 5).split(".")
        pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
        self.assertEqual(json.loads(base64.urlsafe_b64decode(pad(header))),
                         {"alg": "HS256", "typ": "JWT"})
        self.assertEqual(json.loads(base64.urlsafe_b64decode(pad(payload))),
                         {"conference": "r", "role": "moderator", "exp": int(NOW + 5)})

    def test_rfc7515Vector(self):
        """The HS256 example of RFC 7515 appendix A.1 passes the signature check."""
        key = base64.urlsafe_b64decode(
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow==")
        token = ("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
                 ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
                 ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        self.assertEqual(tokens.decode(key, token)["iss"], "joe")
        self.assertRaises(tokens.InvalidToken, tokens.decode, key[:-1] + b"x", token)

    def assertRefused(self, token, why, now=NOW, secret=SECRET):
        """The token is refused, for this reason."""
        e = self.assertRaises(tokens.InvalidToken, tokens.verify, secret, token, now)
        self.assertIn(why, str(e))
        self.assertNotIn(secret, str(e))

    def test_expiry(self):
        """Valid until just before C{exp}; refused from then on."""
        token = tokens.mint(SECRET, "room", "speaker", NOW + 60)
        self.assertEqual(tokens.verify(SECRET, token, NOW + 59.9).role, Role.SPEAKER)
        self.assertRefused(token, "expired", now=NOW + 60)

    def test_wrongSecret(self):
        """Another secret's token is refused."""
        token = tokens.mint("another-secret-0123456789-abcdefghijkl", "room", "speaker", NOW + 60)
        self.assertRefused(token, "bad signature")

    def test_tampered(self):
        """Changing the claims, or any character of the signature, breaks it."""
        token = tokens.mint(SECRET, "room", "listener", NOW + 60)
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["role"] = "moderator"
        forged = tokens._b64encode(json.dumps(claims).encode())
        self.assertRefused(f"{header}.{forged}.{signature}", "bad signature")
        for i in range(len(signature) - 1):  # the last character has spare bits
            flipped = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1:]
            self.assertRefused(f"{header}.{payload}.{flipped}", "bad signature")
        self.assertRefused(f"{header}.{payload}.{signature}=", "base64url")
        self.assertRefused(f"{header}.{payload}", "not a token")
        self.assertRefused("", "not a token")
        self.assertRefused("x" * 2000, "not a token")

    def test_otherAlgorithms(self):
        """Only HS256: an unsigned ("alg": "none") token is refused."""
        header = tokens._b64encode(b'{"alg":"none","typ":"JWT"}')
        payload = tokens._b64encode(json.dumps(
            {"conference": "room", "role": "moderator", "exp": NOW + 60}).encode())
        self.assertRefused(f"{header}.{payload}.", "not a token")
        signingInput = f"{header}.{payload}"
        signature = tokens._b64encode(tokens._sign(SECRET.encode(), signingInput.encode()))
        self.assertRefused(f"{signingInput}.{signature}", "not an HS256 token")

    def signed(self, claims: dict) -> str:
        """A correctly signed token with arbitrary claims."""
        signingInput = (tokens._b64encode(b'{"alg":"HS256"}') + "."
                        + tokens._b64encode(json.dumps(claims).encode()))
        return signingInput + "." + tokens._b64encode(
            tokens._sign(SECRET.encode(), signingInput.encode()))

    def test_claimsChecked(self):
        """Signed but incomplete or odd claims are refused."""
        good = {"conference": "room", "role": "speaker", "exp": NOW + 60}
        self.assertEqual(tokens.verify(SECRET, self.signed(good), NOW).role, Role.SPEAKER)
        for change, why in [({"exp": None}, "no expiry"), ({"exp": "soon"}, "no expiry"),
                            ({"exp": True}, "no expiry"), ({"exp": float("inf")}, "no expiry"),
                            ({"conference": ""}, "no conference"), ({"conference": 7}, "no conference"),
                            ({"role": "admin"}, "no valid role"), ({"role": None}, "no valid role"),
                            ({"name": 3}, "name"), ({"nbf": NOW + 1}, "not valid yet")]:
            claims = {k: v for k, v in dict(good, **change).items() if v is not None}
            self.assertRefused(self.signed(claims), why)
        self.assertRefused(self.signed(["not", "an", "object"]), "not an object")

    def test_mintChecks(self):
        """Minting refuses short secrets, unknown roles, empty IDs and oversize tokens."""
        self.assertRaises(ValueError, tokens.mint, "short", "room", "speaker", NOW)
        self.assertRaises(ValueError, tokens.mint, SECRET, "room", "admin", NOW)
        self.assertRaises(ValueError, tokens.mint, SECRET, "", "speaker", NOW)
        self.assertRaises(ValueError, tokens.mint, SECRET, "room", "speaker", NOW, "n" * 800)

    def runMain(self, *argv) -> tuple[int, str, str]:
        """Run the command line in-process."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = tokens.main(list(argv), now=NOW)
        return code, out.getvalue(), err.getvalue()

    def test_commandLine(self):
        """C{mint} prints a token that C{verify} (and the policy) accept."""
        code, out, _ = self.runMain("mint", "--secret", SECRET, "--conference", "room",
                                     "--role", "speaker", "--ttl", "3600", "--name", "Bob")
        self.assertEqual(code, 0)
        token = out.strip()
        self.assertEqual(tokens.verify(SECRET, token, NOW),
                         tokens.Invite("room", Role.SPEAKER, NOW + 3600, "Bob"))
        secretFile = self.mktemp()
        with open(secretFile, "w") as f:
            f.write(SECRET + "\n")
        code, out, _ = self.runMain("verify", "--secret-file", secretFile, token)
        self.assertEqual((code, out), (0, "conference=room role=speaker expires_in=3600s name=Bob\n"))
        code, _, err = self.runMain("verify", "--secret", SECRET + "x", token)
        self.assertEqual(code, 1)
        self.assertIn("bad signature", err)
        code, _, err = self.runMain("mint", "--secret", "short", "--conference", "r",
                                     "--role", "speaker")
        self.assertEqual(code, 1)
        self.assertIn("at least 32 bytes", err)

    @defer.inlineCallbacks
    def test_module(self):
        """C{python -m ahoyconference.tokens mint ...} works as documented."""
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "ahoyconference.tokens", "mint", "--secret", SECRET, "--conference", "room",
             "--role", "moderator", "--ttl", "60"],
            env=dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1"), path=REPO)
        self.assertEqual(code, 0, err)
        from twisted.internet import reactor

        invite = tokens.verify(SECRET, out.decode().strip(), reactor.seconds())
        self.assertEqual((invite.conferenceID, invite.role), ("room", Role.MODERATOR))


def tokenPolicy(create="token", now=NOW) -> tuple[TokenPolicy, task.Clock]:
    """A token policy on a clock set to C{now}."""
    clock = task.Clock()
    clock.advance(now)
    return tokenPolicyPlugin.makePolicy({"secret": SECRET, "create": create}, clock), clock


class TokenPolicyTests(unittest.TestCase):
    """The C{token} policy at unit level."""

    def test_interface(self):
        """Plugin and policy provide their interfaces."""
        self.assertTrue(verifyObject(IPolicyPlugin, tokenPolicyPlugin))
        self.assertTrue(verifyObject(IConferencePolicy, tokenPolicy()[0]))

    def test_options(self):
        """Wrong options are refused naming the key."""
        secretFile = self.mktemp()
        with open(secretFile, "w") as f:
            f.write(SECRET + "\n")
        policy = tokenPolicyPlugin.makePolicy({"secret_file": secretFile}, task.Clock())
        self.assertEqual(policy._key, SECRET.encode())
        for options, key in [({}, "[policy] secret"),
                             ({"secret": SECRET, "secret_file": secretFile}, "[policy] secret"),
                             ({"secret": "too-short"}, "[policy] secret:"),
                             ({"secret": 12345678901234567890123456789012345}, "[policy] secret:"),
                             ({"secret": SECRET, "create": "everyone"}, "[policy] create"),
                             ({"secret": SECRET, "ttl": 5}, "[policy] ttl"),
                             ({"secret_file": secretFile + ".missing"}, "[policy] secret_file")]:
            e = self.assertRaises(ValueError, tokenPolicyPlugin.makePolicy, options, task.Clock())
            self.assertIn(key, str(e))
            self.assertNotIn(SECRET, str(e))

    def test_roleFor(self):
        """The token's role for its conference; 403 for anything else."""
        policy, clock = tokenPolicy()
        room = ConferenceSettings("room", "room", password="ignored")
        token = tokens.mint(SECRET, "room", "listener", NOW + 10)
        self.assertIs(policy.roleFor(CLIENT, room, "anyone", token), Role.LISTENER)
        for bad in ["", "ignored", tokens.mint(SECRET, "other", "moderator", NOW + 10)]:
            e = self.assertRaises(ProtocolError, policy.roleFor, CLIENT, room, "a", bad)
            self.assertEqual(e.status, 403)
        clock.advance(10)
        e = self.assertRaises(ProtocolError, policy.roleFor, CLIENT, room, "a", token)
        self.assertEqual((e.status, e.detail), (403, "token refused: expired"))

    def test_nameBound(self):
        """A token with a name admits only that name."""
        policy, _ = tokenPolicy()
        room = ConferenceSettings("room", "room")
        token = tokens.mint(SECRET, "room", "speaker", NOW + 10, name="Alice")
        self.assertIs(policy.roleFor(CLIENT, room, "Alice", token), Role.SPEAKER)
        e = self.assertRaises(ProtocolError, policy.roleFor, CLIENT, room, "Mallory", token)
        self.assertEqual(e.status, 403)

    def test_mayCreate(self):
        """C{create}: a moderator token for the ID, anyone, or nobody; passwords dropped."""
        asked = ConferenceSettings("room", "room", password="p", listenerPassword="l",
                                   moderatorPassword=tokens.mint(SECRET, "room", "moderator", NOW + 9))
        for create in ("token", "anyone"):
            final = tokenPolicy(create)[0].mayCreate(CLIENT, asked)
            self.assertEqual((final.conferenceID, final.password, final.listenerPassword,
                              final.moderatorPassword), ("room", "", "", ""))
        for create, moderatorPassword in [
                ("token", ""),
                ("token", tokens.mint(SECRET, "room", "speaker", NOW + 9)),
                ("token", tokens.mint(SECRET, "other", "moderator", NOW + 9)),
                ("token", tokens.mint(SECRET, "room", "moderator", NOW)),
                ("nobody", asked.moderatorPassword)]:
            settings = ConferenceSettings("room", "room", moderatorPassword=moderatorPassword)
            e = self.assertRaises(ProtocolError, tokenPolicy(create)[0].mayCreate, CLIENT, settings)
            self.assertEqual(e.status, 403)

    def test_mayRequest(self):
        """Who may do what follows the role, as with passwords."""
        policy = tokenPolicy()[0]
        reference = PasswordPolicy()
        for role in Role:
            for action in Action:
                self.assertEqual(policy.mayRequest(CLIENT, role, action, None),
                                 reference.mayRequest(CLIENT, role, action, None))


class AllowlistPolicyTests(unittest.TestCase):
    """The C{allowlist} policy at unit level."""

    def make(self, **options) -> AllowlistPolicy:
        """The policy from these options."""
        return allowlistPolicyPlugin.makePolicy(options, task.Clock())

    def test_interface(self):
        """Plugin and policy provide their interfaces."""
        self.assertTrue(verifyObject(IPolicyPlugin, allowlistPolicyPlugin))
        self.assertTrue(verifyObject(IConferencePolicy, self.make(conferences=["a"])))

    def test_addressIn(self):
        """IPv4, IPv6, IPv4-mapped IPv6; unreadable addresses match nothing."""
        networks = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
        self.assertTrue(addressIn("10.1.2.3", networks))
        self.assertTrue(addressIn("::ffff:10.1.2.3", networks))
        self.assertTrue(addressIn("2001:db8::1", networks))
        self.assertFalse(addressIn("11.0.0.1", networks))
        self.assertFalse(addressIn("::ffff:11.0.0.1", networks))
        self.assertFalse(addressIn("2001:db9::1", networks))
        self.assertFalse(addressIn("not-an-address", networks))
        self.assertFalse(addressIn("", networks))

    def assertRefused(self, f, *args):
        """C{f(*args)} raises ProtocolError 403."""
        e = self.assertRaises(ProtocolError, f, *args)
        self.assertEqual(e.status, 403)

    def test_createNetworks(self):
        """Only the listed networks may create."""
        policy = self.make(create_networks=["10.0.0.0/8", "127.0.0.1"])
        room = ConferenceSettings("room", "room")
        self.assertIsNone(policy.mayCreate(ClientInfo("10.9.9.9"), room))
        self.assertIsNone(policy.mayCreate(ClientInfo("127.0.0.1"), room))
        self.assertRefused(policy.mayCreate, ClientInfo("127.0.0.2"), room)
        self.assertIs(policy.roleFor(ClientInfo("192.0.2.1"), room, "a", ""), Role.MODERATOR)

    def test_conferences(self):
        """Only the listed IDs (and patterns) may be created."""
        policy = self.make(conferences=["standup", "team-*"])
        for cid in ("standup", "team-a", "team-"):
            self.assertIsNone(policy.mayCreate(CLIENT, ConferenceSettings(cid, cid)))
        for cid in ("Standup", "standup2", "my-team-a", "TEAM-a"):
            self.assertRefused(policy.mayCreate, CLIENT, ConferenceSettings(cid, cid))

    def test_joinNetworks(self):
        """Only the listed networks may join; the role still comes from the password."""
        policy = self.make(join_networks=["192.0.2.0/24"])
        room = ConferenceSettings("room", "room", password="s")
        self.assertIs(policy.roleFor(ClientInfo("192.0.2.7"), room, "a", "s"), Role.SPEAKER)
        self.assertIs(policy.roleFor(ClientInfo("192.0.2.7"), room, "a", ""), Role.LISTENER)
        self.assertRefused(policy.roleFor, ClientInfo("192.0.2.7"), room, "a", "wrong")
        self.assertRefused(policy.roleFor, ClientInfo("198.51.100.1"), room, "a", "s")

    def test_options(self):
        """Wrong options are refused naming the key."""
        for options, key in [({}, "[policy] create_networks"),
                             ({"create_networks": "10.0.0.0/8"}, "[policy] create_networks"),
                             ({"create_networks": []}, "[policy] create_networks"),
                             ({"create_networks": ["10.0.0.1/8"]}, "[policy] create_networks"),
                             ({"join_networks": ["nonsense"]}, "[policy] join_networks"),
                             ({"join_networks": [10]}, "[policy] join_networks"),
                             ({"conferences": []}, "[policy] conferences"),
                             ({"conferences": [""]}, "[policy] conferences"),
                             ({"conference": ["a"]}, "[policy] conference:")]:
            e = self.assertRaises(ValueError, allowlistPolicyPlugin.makePolicy, options, None)
            self.assertIn(key, str(e))


class ServerTestCase(unittest.TestCase):
    """Base: real servers and clients, all closed after each test."""

    def setUp(self):
        self.servers: list[tuple[Server, object]] = []
        self.clients: list[Client] = []

    async def server(self, policy, clock=None) -> Server:
        """A started server with this policy (wrong passwords never back off)."""
        limits = Limits(join_rate=0, chat_rate=0, max_connections_per_ip=0,
                        max_conferences_per_client=0, password_failures=0)
        server = await Server(config=testConfig(limits=limits), clock=clock, policy=policy).start()
        self.servers.append((server, clock))
        return server

    async def connect(self, server: Server) -> Client:
        """A connected client, closed after the test."""
        client = await Client.connect(server.url)
        self.clients.append(client)
        return client

    @asyncTest
    async def tearDown(self):
        """Close the clients, then the servers (advancing a test clock while they drain)."""
        for client in self.clients:
            await client.close()
        for server, clock in self.servers:
            for _ in range(300):
                if not server.service.sessions:
                    break
                await asyncio.sleep(0.01)
            stopping = asyncio.ensure_future(server.stop())
            while not stopping.done():  # a Clock-driven service waits on its clock
                if isinstance(clock, task.Clock):
                    clock.advance(0.05)
                await asyncio.sleep(0.01)
            await stopping


class TokenEndToEndTests(ServerTestCase):
    """The token policy over the real server."""

    def mint(self, conference="room", role="speaker", ttl=3600, name=None) -> str:
        """A token valid on the policy's clock."""
        return tokens.mint(SECRET, conference, role, self.clock.seconds() + ttl, name)

    async def start(self) -> Client:
        """A server with the token policy, and a moderator in conference "room"."""
        policy, self.clock = tokenPolicy()
        self.srv = await self.server(policy)
        moderator = await self.connect(self.srv)
        token = self.mint(role="moderator")
        created = await moderator.request("CONFERENCE_CREATE_request", conferenceID="room",
                                          moderatorPassword=token, password="plain")
        self.assertEqual(created["status"], 200, created)
        joined = await moderator.request("CONFERENCE_JOIN_request", conferenceID="room",
                                         name="Mod", password=token)
        self.assertEqual((joined["status"], joined["moderator"]), (200, True), joined)
        return moderator

    async def join(self, password, name="Guest", conference="room") -> tuple[Client, dict]:
        """A new client trying to join."""
        client = await self.connect(self.srv)
        response = await client.request("CONFERENCE_JOIN_request", conferenceID=conference,
                                        name=name, password=password)
        return client, response

    def members(self) -> int:
        """How many members the server holds."""
        return len(self.srv.service.members)

    @asyncTest
    async def test_createNeedsModeratorToken(self):
        """Creating needs a moderator token for that ID; none, a speaker's or another ID's: 403."""
        await self.start()
        client = await self.connect(self.srv)
        for password in ["", self.mint("new", "speaker"), self.mint("other", "moderator")]:
            response = await client.request("CONFERENCE_CREATE_request", conferenceID="new",
                                            moderatorPassword=password)
            self.assertEqual(response["status"], 403)
        self.assertNotIn("new", self.srv.service.conferences)
        response = await client.request("CONFERENCE_CREATE_request", conferenceID="new",
                                        moderatorPassword=self.mint("new", "moderator"))
        self.assertEqual(response["status"], 200)
        self.assertEqual(self.srv.service.conferences["room"].settings.password, "")

    @asyncTest
    async def test_valid(self):
        """A valid speaker token joins as speaker; the moderator sees the join."""
        moderator = await self.start()
        _, joined = await self.join(self.mint(role="speaker"))
        self.assertEqual(joined["status"], 200)
        self.assertEqual((joined["speaker"], joined["moderator"]), (True, False))
        indication = await moderator.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(indication["member"]["name"], "Guest")
        self.assertEqual(self.members(), 2)

    @asyncTest
    async def test_expired(self):
        """A token past its expiry gets 403, though it worked a moment earlier."""
        await self.start()
        token = self.mint(role="speaker", ttl=60)
        self.clock.advance(59)
        first, joined = await self.join(token)
        self.assertEqual(joined["status"], 200)
        self.clock.advance(1)
        _, joined = await self.join(token)
        self.assertEqual(joined["status"], 403)
        _, joined = await self.join(self.mint(role="speaker", ttl=-5))
        self.assertEqual(joined["status"], 403)
        self.assertEqual(self.members(), 2)

    @asyncTest
    async def test_wrongConference(self):
        """A token for another conference gets 403 here (and 404 for a missing one)."""
        await self.start()
        client = await self.connect(self.srv)
        created = await client.request("CONFERENCE_CREATE_request", conferenceID="other",
                                       moderatorPassword=self.mint("other", "moderator"))
        self.assertEqual(created["status"], 200)
        joined = await client.request("CONFERENCE_JOIN_request", conferenceID="room",
                                      name="Guest", password=self.mint("other", "moderator"))
        self.assertEqual(joined["status"], 403)
        _, joined = await self.join(self.mint("nowhere", "moderator"), conference="nowhere")
        self.assertEqual(joined["status"], 404)
        response = await client.request("CONFERENCE_JOIN_request", conferenceID="other",
                                        name="Guest", password=self.mint("other", "listener"))
        self.assertEqual((response["status"], response["speaker"]), (200, False))

    @asyncTest
    async def test_tampered(self):
        """Tampered tokens (claims or signature) and plain passwords get 403."""
        await self.start()
        token = self.mint(role="listener")
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["role"] = "moderator"
        forged = tokens._b64encode(json.dumps(claims).encode())
        for password in [f"{header}.{forged}.{signature}",
                         token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
                         tokens.mint("another-secret-0123456789-abcdefghijkl", "room", "moderator",
                                     self.clock.seconds() + 60),
                         "plain", ""]:
            _, joined = await self.join(password)
            self.assertEqual(joined["status"], 403, password)
        self.assertEqual(self.members(), 1)

    @asyncTest
    async def test_roleEscalation(self):
        """
        A listener token joins as listener and cannot share, kick, lock,
        describe or create; a name-bound token admits only that name.
        """
        moderator = await self.start()
        listener, joined = await self.join(self.mint(role="listener"))
        self.assertEqual((joined["status"], joined["speaker"], joined["moderator"]),
                         (200, False, False))
        indication = await moderator.expect("CONFERENCE_JOIN_indication")
        moderatorID = [m for m in self.srv.service.members.values() if m.name == "Mod"][0].memberID
        for request, params in [("MEDIA_SHARE_request", {"audio": True, "video": False}),
                                ("CONFERENCE_KICK_request", {"memberID": moderatorID}),
                                ("CONFERENCE_LOCK_request", {"locked": True}),
                                ("CONFERENCE_DESCRIPTION_request", {"description": "mine"})]:
            response = await listener.request(request, **params)
            self.assertEqual(response["status"], 403, request)
        chat = await listener.request("CHAT_MESSAGE_request", message={"text": "hi"})
        self.assertEqual(chat["status"], 200)
        self.assertEqual(self.srv.service.conferences["room"].description, "")
        self.assertFalse(self.srv.service.conferences["room"].locked)
        self.assertEqual(self.members(), 2)
        # The listener token again as a moderator password at creation: no.
        response = await listener.request("CONFERENCE_CREATE_request", conferenceID="room2",
                                          moderatorPassword=self.mint("room2", "listener"))
        self.assertEqual(response["status"], 403)
        # A name-bound token cannot be used under another name.
        bound = self.mint(role="moderator", name="Carol")
        _, joined = await self.join(bound, name="Mallory")
        self.assertEqual(joined["status"], 403)
        _, joined = await self.join(bound, name="Carol")
        self.assertEqual((joined["status"], joined["moderator"]), (200, True))
        self.assertEqual(indication["member"]["name"], "Guest")


class AllowlistEndToEndTests(ServerTestCase):
    """The allowlist policy over the real server (clients come from 127.0.0.1)."""

    @asyncTest
    async def test_createNetworks(self):
        """Loopback may not create when only 10/8 may; it may when loopback is listed."""
        server = await self.server(allowlistPolicyPlugin.makePolicy(
            {"create_networks": ["10.0.0.0/8"]}, None))
        client = await self.connect(server)
        response = await client.request("CONFERENCE_CREATE_request", conferenceID="room")
        self.assertEqual(response["status"], 403)
        self.assertEqual(server.service.conferences, {})
        server = await self.server(allowlistPolicyPlugin.makePolicy(
            {"create_networks": ["127.0.0.0/8"], "conferences": ["room"]}, None))
        client = await self.connect(server)
        response = await client.request("CONFERENCE_CREATE_request", conferenceID="room")
        self.assertEqual(response["status"], 200)
        response = await client.request("CONFERENCE_CREATE_request", conferenceID="room2")
        self.assertEqual(response["status"], 403)


@implementer(IConferencePolicy)
class MisbehavingPolicy(PasswordPolicy):
    """
    The password policy, except that the methods named in C{slow} answer
    with a Deferred the test fires (or never), and those in C{broken} raise.
    """

    name = "misbehaving"

    def __init__(self, slow=(), broken=()):
        self.slow = set(slow)
        self.broken = set(broken)
        self.pending: list[tuple[str, defer.Deferred]] = []

    def _answer(self, method, result):
        if method in self.broken:
            raise RuntimeError(f"policy bug in {method}")
        if method in self.slow:
            d = defer.Deferred()
            self.pending.append((method, d))
            return d
        return result

    def mayCreate(self, client, settings):
        """Maybe slow or broken."""
        return self._answer("mayCreate", super().mayCreate(client, settings))

    def roleFor(self, client, settings, name, password):
        """Maybe slow or broken (never for the name "ok")."""
        if name == "ok":
            return super().roleFor(client, settings, name, password)
        return self._answer("roleFor", super().roleFor(client, settings, name, password))

    def mayRequest(self, client, role, action, settings):
        """Maybe slow or broken."""
        return self._answer("mayRequest", super().mayRequest(client, role, action, settings))


class MisbehavingPolicyTests(ServerTestCase):
    """A slow or failing policy refuses the request (503, logged); the server goes on."""

    async def waitForPolicy(self, policy, count=1):
        """Until the policy was asked C{count} times in all."""
        for _ in range(500):
            if len(policy.pending) >= count:
                return
            await asyncio.sleep(0.01)
        self.fail("the policy was never asked")

    def timeoutsLogged(self, events, method) -> int:
        """How many "did not answer in time" warnings name this method."""
        return sum(1 for e in events
                   if "did not answer" in e.get("log_format", "") and e.get("method") == method)

    def test_interface(self):
        """The test policy is a real policy."""
        self.assertTrue(verifyObject(IConferencePolicy, MisbehavingPolicy()))

    @asyncTest
    async def test_slowJoin(self):
        """
        A join whose policy does not answer within C{policy_timeout} gets
        503; no member is left behind, even when the answer comes later.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = task.Clock()
        policy = MisbehavingPolicy(slow={"roleFor"})
        server = await self.server(policy, clock)
        timeout = server.config.limits.policy_timeout
        first, _ = await self.createJoined(server, "ok")
        client = await self.connect(server)
        tid = await client.send({"messageType": "CONFERENCE_JOIN_request", "conferenceID": "room",
                                 "name": "slow", "password": ""})
        await self.waitForPolicy(policy)
        clock.advance(timeout - 0.1)
        self.assertEqual(await client.quiet(0.1), [])
        clock.advance(0.2)
        response = await client.expect("CONFERENCE_JOIN_response", transactionID=tid)
        self.assertEqual((response["status"], response["reason"]), (503, "service unavailable"))
        conference = server.service.conferences["room"]
        self.assertEqual([m.name for m in conference.members.values()], ["ok"])
        self.assertEqual(len(server.service.members), 1)
        self.assertEqual(self.timeoutsLogged(events, "roleFor"), 1)
        # The late answer changes nothing.
        policy.pending[0][1].callback(Role.MODERATOR)
        self.assertEqual(await client.quiet(0.2), [])
        self.assertEqual(await first.quiet(0), [])
        self.assertEqual(len(server.service.members), 1)
        # The same connection can still join, and the server still serves.
        response = await client.request("CONFERENCE_JOIN_request", conferenceID="room",
                                        name="ok", password="")
        self.assertEqual(response["status"], 200)
        self.assertEqual(len(conference.members), 2)

    @asyncTest
    async def test_slowCreate(self):
        """A create whose policy times out gets 503 and creates nothing, ever."""
        clock = task.Clock()
        policy = MisbehavingPolicy(slow={"mayCreate"})
        server = await self.server(policy, clock)
        client = await self.connect(server)
        tid = await client.send({"messageType": "CONFERENCE_CREATE_request",
                                 "conferenceID": "room"})
        await self.waitForPolicy(policy)
        clock.advance(server.config.limits.policy_timeout + 0.1)
        response = await client.expect("CONFERENCE_CREATE_response", transactionID=tid)
        self.assertEqual(response["status"], 503)
        policy.pending[0][1].callback(None)
        await client.quiet(0.1)
        self.assertEqual(server.service.conferences, {})

    @asyncTest
    async def test_slowRequest(self):
        """A request whose permission times out gets 503; the member stays."""
        clock = task.Clock()
        policy = MisbehavingPolicy()
        server = await self.server(policy, clock)
        first, _ = await self.createJoined(server, "ok")
        second, joined = await self.createJoined(server, "ok", create=False)
        policy.slow.add("mayRequest")
        tid = await first.send({"messageType": "CHAT_MESSAGE_request", "message": {"text": "x"}})
        await self.waitForPolicy(policy)
        clock.advance(server.config.limits.policy_timeout + 0.1)
        response = await first.expect("CHAT_MESSAGE_response", transactionID=tid)
        self.assertEqual(response["status"], 503)
        self.assertEqual(len(server.service.conferences["room"].members), 2)
        policy.slow.clear()
        response = await first.request("CHAT_MESSAGE_request", message={"text": "y"})
        self.assertEqual(response["status"], 200)
        chat = await second.expect("CHAT_MESSAGE_indication")
        self.assertEqual(chat["message"], {"text": "y"})
        self.assertEqual([m for m in await second.quiet(0.1)
                          if m["messageType"] == "CHAT_MESSAGE_indication"], [])

    @asyncTest
    async def test_disconnectWhileThinking(self):
        """A client gone before the policy answers is not left in the conference."""
        policy = MisbehavingPolicy(slow={"roleFor"})
        server = await self.server(policy)
        first, _ = await self.createJoined(server, "ok")
        client = await self.connect(server)
        await client.send({"messageType": "CONFERENCE_JOIN_request", "conferenceID": "room",
                           "name": "leaving", "password": ""})
        await self.waitForPolicy(policy)
        await client.close()
        for _ in range(300):
            if len(server.service.sessions) == 1:
                break
            await asyncio.sleep(0.01)
        policy.pending[0][1].callback(Role.SPEAKER)
        await asyncio.sleep(0.1)
        self.assertEqual([m.name for m in server.service.members.values()], ["ok"])
        self.assertEqual(len(server.service.conferences["room"].members), 1)

    @asyncTest
    async def test_raising(self):
        """
        A policy that raises gets the request 503, with the traceback
        logged; the connection and the server go on serving.
        """
        policy = MisbehavingPolicy(broken={"mayCreate"})
        server = await self.server(policy)
        client = await self.connect(server)
        response = await client.request("CONFERENCE_CREATE_request", conferenceID="room")
        self.assertEqual(response["status"], 503)
        self.assertEqual(server.service.conferences, {})
        policy.broken = {"roleFor"}
        response = await client.request("CONFERENCE_CREATE_request", conferenceID="room")
        self.assertEqual(response["status"], 200)
        response = await client.request("CONFERENCE_JOIN_request", conferenceID="room",
                                        name="someone", password="")
        self.assertEqual(response["status"], 503)
        self.assertEqual(server.service.members, {})
        policy.broken = {"mayRequest"}
        response = await client.request("CONFERENCE_JOIN_request", conferenceID="room",
                                        name="ok", password="")
        self.assertEqual(response["status"], 200)
        response = await client.request("CONFERENCE_LOCK_request", locked=True)
        self.assertEqual(response["status"], 503)
        self.assertFalse(server.service.conferences["room"].locked)
        policy.broken = set()
        response = await client.request("CONFERENCE_LOCK_request", locked=True)
        self.assertEqual(response["status"], 200)
        other = await self.connect(server)
        response = await other.request("CONFERENCE_CREATE_request", conferenceID="room2")
        self.assertEqual(response["status"], 200)
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(sorted(str(e.value) for e in errors),
                         ["policy bug in mayCreate", "policy bug in mayRequest",
                          "policy bug in roleFor"])

    async def createJoined(self, server, name, create=True) -> tuple[Client, dict]:
        """A client that (creates and) joins "room"."""
        client = await self.connect(server)
        if create:
            response = await client.request("CONFERENCE_CREATE_request", conferenceID="room")
            self.assertEqual(response["status"], 200)
        joined = await client.request("CONFERENCE_JOIN_request", conferenceID="room",
                                      name=name, password="")
        self.assertEqual(joined["status"], 200)
        return client, joined


class BadAnswerTests(unittest.TestCase):
    """A policy that answers nonsense refuses with 503, never 500."""

    @asyncTest
    async def test_badAnswers(self):
        from ahoyconference.interfaces import ConferenceSettings, IConferencePolicy
        from tests.helpers import Client, Server, join

        @implementer(IConferencePolicy)
        class Nonsense:
            name = "nonsense"

            def mayCreate(self, client, settings):
                return "sure"

            def roleFor(self, client, settings, name, password):
                return {"": None, "a": "admin", "b": 7, "c": True}.get(password, 2)

            def mayRequest(self, client, role, action, settings):
                return "yes"

        server = await Server(policy=Nonsense()).start()
        clients = []
        try:
            c = await Client.connect(server.url)
            clients.append(c)
            r = await c.request("CONFERENCE_CREATE_request", conferenceID="r")
            self.assertEqual(r["status"], 503)
            server.service._addConference(ConferenceSettings(conferenceID="r", conferenceName="r"))
            for password in ("", "a", "b", "c"):
                c2, r = await join(server.url, conferenceID="r", password=password)
                clients.append(c2)
                self.assertEqual(r["status"], 503, password)
            c3, r = await join(server.url, conferenceID="r", password="ok")
            clients.append(c3)
            self.assertEqual((r["status"], r["speaker"], r["moderator"]), (200, True, False))
            r = await c3.request("CHAT_MESSAGE_request", message={"text": "x"})
            self.assertEqual(r["status"], 503)
            self.assertEqual(len(server.service.members), 1)
            self.assertNotIn(500, server.service.counters["errors"])
        finally:
            for client in clients:
                await client.close()
            await server.stop()
