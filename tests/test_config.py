"""
Tests for L{ahoyconference.config}: every kind of mistake is one
L{ConfigError} naming the file and the key; the documented default
configuration (conf/ahoyconference.toml) parses, documents every key of the
schema with its default; C{twistd ahoyconference --config=BROKEN} stops with
one line.
"""

from __future__ import annotations

import os
import re
import tomllib

from twisted.trial import unittest

from ahoyconference.config import (
    ONE_PORT,
    ROOM_KEYS,
    SCHEMA,
    Config,
    ConfigError,
    IceSettings,
    loadConfig,
    parseConfig,
)
from tests.serverprocess import ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "conf", "ahoyconference.toml")


class ErrorTests(unittest.TestCase):
    """Each mistake: a L{ConfigError} whose message starts with the file and names the key."""

    def load(self, text: str):
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path, loadConfig(path)

    def assertError(self, text: str, key: str, *more: str) -> str:
        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        message = str(caught.exception)
        self.assertTrue(message.startswith(f"{path}: "), message)
        self.assertIn(key, message)
        for fragment in more:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_valid(self):
        """A small valid file loads, and its path is kept (for SIGHUP)."""
        path, config = self.load(
            '[server]\nports = ["tcp:0"]\n[limits]\nmax_members = 7\n'
            '[[rooms]]\nid = "a"\n[[rooms]]\nid = "b"\nmax_member = 3\n')
        self.assertEqual(config.ports, ("tcp:0",))
        self.assertEqual(config.limits.max_members, 7)
        self.assertEqual([r.conferenceID for r in config.rooms], ["a", "b"])
        self.assertEqual(config.rooms[1].maxMember, 3)
        self.assertTrue(all(r.permanent for r in config.rooms))
        self.assertEqual(config.path, path)

    def test_emptyFile(self):
        """An empty file is the defaults."""
        _, config = self.load("")
        self.assertEqual(config, Config(path=config.path))

    # -- tables and keys

    def test_unknownTable(self):
        self.assertError("[srever]\n", "[srever]", "unknown table", "server")

    def test_tableNotATable(self):
        self.assertError("server = 1\n", "[server]", "must be a table")
        self.assertError("policy = 1\n", "[policy]", "must be a table")

    def test_unknownKey(self):
        for table in SCHEMA:
            self.assertError(f"[{table}]\nbogus_key = 1\n", f"[{table}] bogus_key", "unknown key")

    def test_unknownKeyNamesTheKnownOnes(self):
        self.assertError("[server]\nportz = []\n", "[server] portz", "ports", "allowed_origins")

    # -- types

    def test_wrongTypes(self):
        """Every key of the schema refuses a value of the wrong type, naming the key."""
        for table, keys in SCHEMA.items():
            for key, (types, _) in keys.items():
                wrong = '"text"' if str not in types else "12"
                self.assertError(f"[{table}]\n{key} = {wrong}\n", f"[{table}] {key}", "must be")

    def test_boolIsNotANumber(self):
        self.assertError("[limits]\nmax_members = true\n", "[limits] max_members", "an integer")
        self.assertError("[limits]\nidle_timeout = false\n", "[limits] idle_timeout", "a number")

    def test_floatIsNotAnInteger(self):
        self.assertError("[limits]\nmax_members = 1.5\n", "[limits] max_members", "an integer")

    def test_intIsANumber(self):
        _, config = self.load("[limits]\nidle_timeout = 5\n")
        self.assertEqual(config.limits.idle_timeout, 5)

    def test_listEntriesMustBeStrings(self):
        for table, key in (("server", "ports"), ("server", "allowed_origins"),
                           ("ice", "host_addresses"), ("metrics", "allow")):
            self.assertError(f"[{table}]\n{key} = [1]\n", f"[{table}] {key}", "string")

    def test_logLevel(self):
        self.assertError('[server]\nlog_level = "loud"\n', "[server] log_level", "one of debug")
        _, config = self.load('[server]\nlog_level = "debug"\n')
        self.assertEqual(config.log_level, "debug")

    def test_policyName(self):
        self.assertError("[policy]\nname = 3\n", "[policy] name", "must be a string")
        _, config = self.load('[policy]\nname = "other"\nlevel = 2\n')
        self.assertEqual((config.policy_name, config.policy_options), ("other", {"level": 2}))

    # -- minimums

    def test_belowMinimum(self):
        """Every limit refuses a negative value; some refuse 0."""
        for key in SCHEMA["limits"]:
            self.assertError(f"[limits]\n{key} = -1\n", f"[limits] {key}", "at least 0")
        for key in ("max_message_bytes", "max_chat_bytes", "max_members", "max_conferences"):
            self.assertError(f"[limits]\n{key} = 0\n", f"[limits] {key}", "at least 1")

    def test_zeroAllowed(self):
        _, config = self.load("[limits]\njoin_rate = 0\nmax_connections_per_ip = 0\n")
        self.assertEqual((config.limits.join_rate, config.limits.max_connections_per_ip), (0, 0))

    # -- [[rooms]]

    def test_roomsNotAnArrayOfTables(self):
        self.assertError("rooms = 1\n", "rooms", "array of tables")

    def test_roomNotATable(self):
        self.assertError('rooms = ["lobby"]\n', "[[rooms]] #1", "must be a table")

    def test_roomWithoutID(self):
        self.assertError('[[rooms]]\nname = "x"\n', "[[rooms]] #1 id", "required")
        self.assertError('[[rooms]]\nid = ""\n', "[[rooms]] #1 id", "required")

    def test_roomUnknownKey(self):
        self.assertError('[[rooms]]\nid = "a"\n[[rooms]]\nid = "b"\nmaxMember = 3\n',
                         "[[rooms]] #2 maxMember", "unknown key", "max_member")

    def test_roomWrongTypes(self):
        for key, types in ROOM_KEYS.items():
            wrong = '"text"' if str not in types else "12"
            prefix = 'id = "a"\n' if key != "id" else ""
            self.assertError(f"[[rooms]]\n{prefix}{key} = {wrong}\n", f"[[rooms]] #1 {key}", "must be")

    def test_roomBelowMinimum(self):
        for key in ("max_member", "max_video_bitrate"):
            self.assertError(f'[[rooms]]\nid = "a"\n{key} = 0\n', f"[[rooms]] #1 {key}", "at least 1")

    def test_duplicateRoomIDs(self):
        self.assertError('[[rooms]]\nid = "a"\n[[rooms]]\nid = "b"\n[[rooms]]\nid = "a"\n',
                         "[[rooms]] id", "'a'", "twice")

    # -- [ice] servers

    def test_iceServerNotATable(self):
        self.assertError('[ice]\nservers = ["stun:x"]\n', "[ice] servers", "table with 'urls'")

    def test_iceServerWithoutURLs(self):
        self.assertError('[ice]\nservers = [{username = "u"}]\n', "[ice] servers", "'urls'")

    def test_iceServerURLsWrongType(self):
        self.assertError("[ice]\nservers = [{urls = 3}]\n", "[ice] servers", "'urls'")

    def test_iceServerUnknownKey(self):
        self.assertError('[ice]\nservers = [{urls = "turn:x", password = "p"}]\n',
                         "[ice] servers", "unknown key 'password'")

    def test_iceServers(self):
        _, config = self.load(
            '[ice]\nservers = [{urls = "stun:s:3478"}, '
            '{urls = ["turn:t:3478"], username = "u", credential = "c"}]\n'
            'public_address = "203.0.113.7"\nhost_addresses = ["127.0.0.1"]\n')
        self.assertEqual(config.ice.servers[1], {"urls": ["turn:t:3478"], "username": "u", "credential": "c"})
        self.assertEqual(config.ice.public_address, "203.0.113.7")
        self.assertEqual(config.ice.host_addresses, ("127.0.0.1",))

    # -- the file itself

    def test_sip(self):
        """[sip]: listen addresses, peers, the RTP range; defaults for the rest."""
        from ahoyconference.config import SipSettings

        config = parseConfig({"sip": {"listen": ["udp:10.0.0.5:5080", "tcp:[::1]:5080"],
                                      "peers": ["192.0.2.0/24"], "rtp_ports": [30000, 30100],
                                      "pin_attempts": 5}})
        self.assertEqual(config.sip.listenAddresses(),
                         [("udp", "10.0.0.5", 5080), ("tcp", "::1", 5080)])
        self.assertEqual(config.sip.rtpAddress(), "10.0.0.5")
        self.assertEqual(config.sip.rtp_ports, (30000, 30100))
        self.assertEqual(config.sip.pin_attempts, 5)
        self.assertEqual(config.sip.max_speakers, SipSettings().max_speakers)
        self.assertIsNone(parseConfig({}).sip)
        self.assertEqual(parseConfig({"sip": {}}).sip, SipSettings())

    def test_sipErrors(self):
        """Each wrong [sip] value is one error naming the key."""
        for table, key in (({"listen": ["sctp:1.2.3.4:5060"]}, "[sip] listen"),
                           ({"listen": ["udp:example.org:5060"]}, "[sip] listen"),
                           ({"listen": ["udp:1.2.3.4:70000"]}, "[sip] listen"),
                           ({"listen": []}, "[sip] listen"),
                           ({"peers": ["10.0.0.0/33"]}, "[sip] peers"),
                           ({"rtp_ports": [20000]}, "[sip] rtp_ports"),
                           ({"rtp_ports": [30000, 20000]}, "[sip] rtp_ports"),
                           ({"rtp_ports": [80, 2000]}, "[sip] rtp_ports"),
                           ({"rtp_address": "here"}, "[sip] rtp_address"),
                           ({"min_se": 30}, "[sip] min_se"),
                           ({"session_expires": 100, "min_se": 200}, "[sip] session_expires"),
                           ({"max_speakers": 0}, "[sip] max_speakers"),
                           ({"pin": "1"}, "[sip] pin"),
                           ({"auth_username": "pbx"}, "[sip] auth_password")):
            e = self.assertRaises(ConfigError, parseConfig, {"sip": table})
            self.assertIn(key, str(e))

    def test_unreadableFile(self):
        missing = os.path.join(self.mktemp(), "nope.toml")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(missing)
        self.assertRegex(str(caught.exception), rf"^{re.escape(missing)}: cannot read: .*No such file")

    def test_directory(self):
        directory = self.mktemp()
        os.mkdir(directory)
        with self.assertRaises(ConfigError) as caught:
            loadConfig(directory)
        self.assertTrue(str(caught.exception).startswith(f"{directory}: cannot read: "))

    def test_unreadablePermissions(self):
        if os.geteuid() == 0:
            raise unittest.SkipTest("root reads every file")
        path, _ = self.load("")
        os.chmod(path, 0)
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertIn("Permission denied", str(caught.exception))

    def test_invalidTOML(self):
        self.assertError("[server]\nports = [\n", "not valid TOML")
        self.assertError('[server]\nports = ["a" "b"]\n', "not valid TOML", "line 2")
        self.assertError("[server]\nports = 1\nports = 2\n", "not valid TOML")
        self.assertError('\u00ff = "x"\n', "not valid TOML")

    def test_notUTF8(self):
        """TOML is UTF-8: other bytes are invalid TOML, not a traceback."""
        path = self.mktemp() + ".toml"
        with open(path, "wb") as f:
            f.write(b'[server]\nlog_level = "\xff"\n')
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertTrue(str(caught.exception).startswith(f"{path}: not valid TOML"), caught.exception)

    def test_noPath(self):
        """Without a file name the message still names the key."""
        with self.assertRaises(ConfigError) as caught:
            parseConfig({"server": {"bogus": 1}})
        self.assertEqual(str(caught.exception).split(": ")[:2], ["<config>", "[server] bogus"])


def _uncommented(text: str) -> str:
    """The documented file with every "#key = value" and "#[table]" line switched on."""
    return re.sub(r"^#(?=\[|[a-z_]+ = )", "", text, flags=re.M)


class DocumentedConfigTests(unittest.TestCase):
    """conf/ahoyconference.toml: valid, complete, with the code's defaults."""

    def setUp(self):
        with open(DOC) as f:
            self.text = f.read()

    def test_parses(self):
        config = loadConfig(DOC)
        self.assertEqual(config.path, DOC)

    def test_defaults(self):
        """
        Every value set in the file is the code's default, except the ports
        (the package's TLS listener and its one UDP port for media, which a
        file without the key does not get: several nodes on one machine
        need one each), so the documentation cannot drift.
        """
        config = loadConfig(DOC)
        self.assertEqual(config, Config(ports=config.ports, path=DOC,
                                        ice=IceSettings(udp_port=ONE_PORT)))

    def test_packagePorts(self):
        """TLS on 8443 with the certificate the package generates."""
        config = loadConfig(DOC)
        self.assertEqual(config.ports, (
            "ssl:8443:privateKey=/etc/ahoyconference/tls/key.pem:certKey=/etc/ahoyconference/tls/cert.pem",))

    def test_productionICE(self):
        """Gather candidates on every interface; no STUN/TURN until configured."""
        ice = loadConfig(DOC).ice
        self.assertEqual((ice.host_addresses, ice.servers, ice.public_address), ((), (), None))

    def test_everyKeyDocumented(self):
        """With the "#key = " examples switched on, every key of the schema is there."""
        data = tomllib.loads(_uncommented(self.text))
        for table, keys in SCHEMA.items():
            self.assertEqual(set(data.get(table, {})), set(keys), table)
        self.assertEqual(len(data["rooms"]), 1)
        self.assertEqual(set(data["rooms"][0]), set(ROOM_KEYS))
        self.assertIn("name", data["policy"])
        self.assertEqual(set(data), set(SCHEMA) | {"rooms", "policy"})

    def test_examplesValid(self):
        """The commented-out settings are themselves a valid configuration."""
        config = parseConfig(tomllib.loads(_uncommented(self.text)), DOC)
        self.assertEqual(config.rooms[0].conferenceID, "lobby")
        self.assertEqual(config.ice.public_address, "203.0.113.7")
        from ahoyconference.config import SipSettings

        self.assertEqual(config.sip, SipSettings(rtp_address="127.0.0.1", auth_username="pbx",
                                                 auth_password="change-me"))

    def test_everyKeyExplained(self):
        """Each setting (on or commented out) comes right after a line of explanation."""
        lines = self.text.splitlines()
        settings = 0
        for number, line in enumerate(lines):
            if re.match(r"^#?[a-z_]+ = ", line):
                settings += 1
                self.assertTrue(number and lines[number - 1].startswith("# "),
                                f"line {number + 1} ({line!r}) has no comment above it")
        self.assertGreaterEqual(settings, sum(len(k) for k in SCHEMA.values()) + len(ROOM_KEYS) + 1)


class TwistdTests(unittest.TestCase):
    """The real twistd from this interpreter's environment, as a subprocess."""

    def twistd(self, *args: str) -> tuple[int, str]:
        """Start C{twistd ahoyconference ARGS}; wait until it exits; its status and output."""
        server = ServerProcess.twistd(os.path.abspath(self.mktemp()), pluginArgs=list(args))
        self.addCleanup(server.stop)
        code = server.start().wait(120)
        return code, server.output()

    def test_brokenConfigOneLine(self):
        """A broken file stops twistd with exactly one line naming the key and the file."""
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write("[limits]\nmax_members = -3\n")
        code, out = self.twistd(f"--config={path}")
        self.assertNotEqual(code, 0)
        lines = out.strip().splitlines()
        self.assertEqual(len(lines), 1, out)
        self.assertIn(path, lines[0])
        self.assertIn("[limits] max_members", lines[0])

    def test_missingConfigOneLine(self):
        path = os.path.abspath(self.mktemp() + ".toml")
        code, out = self.twistd(f"--config={path}")
        self.assertNotEqual(code, 0)
        lines = out.strip().splitlines()
        self.assertEqual(len(lines), 1, out)
        self.assertIn(path, lines[0])
        self.assertIn("cannot read", lines[0])


class HardeningKeysTests(unittest.TestCase):
    """The keys of issue 14's signalling half (docs/reliability.md)."""

    def test_trustedProxies(self):
        """Addresses and networks become networks; anything else names the key."""
        import ipaddress

        config = parseConfig({"server": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8", "::1"]}})
        self.assertEqual(config.trusted_proxies, (
            ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("::1/128")))
        with self.assertRaises(ConfigError) as e:
            parseConfig({"server": {"trusted_proxies": ["proxy.example"]}}, "x.toml")
        self.assertIn("[server] trusted_proxies", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parseConfig({"server": {"trusted_proxies": [5]}}, "x.toml")
        self.assertIn("[server] trusted_proxies", str(e.exception))

    def test_proxyHeader(self):
        """x-forwarded-for (default) or forwarded, in any case."""
        self.assertEqual(parseConfig({}).proxy_header, "x-forwarded-for")
        self.assertEqual(parseConfig({"server": {"proxy_header": "Forwarded"}}).proxy_header,
                         "forwarded")
        with self.assertRaises(ConfigError) as e:
            parseConfig({"server": {"proxy_header": "x-real-ip"}}, "x.toml")
        self.assertIn("[server] proxy_header", str(e.exception))

    def test_queuedBytesHoldsOneMessage(self):
        """max_queued_bytes below max_message_bytes could drop any large answer."""
        with self.assertRaises(ConfigError) as e:
            parseConfig({"limits": {"max_queued_bytes": 1000, "max_message_bytes": 2000}}, "x.toml")
        self.assertIn("[limits] max_queued_bytes", str(e.exception))
        parseConfig({"limits": {"max_queued_bytes": 0}})
        parseConfig({"limits": {"max_queued_bytes": 2000, "max_message_bytes": 2000}})

    def test_officeDefaults(self):
        """A 500-person office behind one address is not locked out by default."""
        limits = parseConfig({}).limits
        self.assertGreaterEqual(limits.max_connections_per_ip, 1000)
        self.assertGreaterEqual(limits.max_conferences_per_client, 100)
        for key in ("share_rate", "media_rate", "mute_rate", "description_rate", "lock_rate",
                    "max_peer_connections", "max_peer_connections_per_member",
                    "max_queued_requests", "max_queued_bytes"):
            self.assertGreater(getattr(limits, key), 0, key)
