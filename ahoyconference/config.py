# -*- test-case-name: tests.test_config -*-
"""
The configuration file (TOML, read with the standard library's C{tomllib})
turned into a frozen L{Config}, with one clear error per mistake.

Every key, its type and its default live in L{SCHEMA}; C{conf/ahoyconference.toml}
documents each one.  Unknown keys and wrong types are errors that name the
key and the file (L{ConfigError}).

Over 400 lines: the schema of every table and its checks are kept in one
place so that they stay one to one with conf/ahoyconference.toml (tested key
by key in tests.test_config); each table's check is a few lines.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

from ahoyconference.interfaces import ConferenceSettings
from ahoyconference.turn import TurnSettings


class ConfigError(Exception):
    """The configuration is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class IceSettings:
    """
    The C{[ice]} table (docs/architecture.md; conf/ahoyconference.toml documents each key).

    @ivar host_addresses: addresses to gather host candidates on; empty means
        aioice's default (every non-loopback interface).
    @ivar servers: STUN/TURN servers as dicts with C{urls} and, for TURN,
        C{username} and C{credential}.
    @ivar public_address: advertised instead of a private host address (1:1 NAT).
    @ivar turn: the TURN server handed to clients with short-lived
        credentials (C{[ice.turn]}, L{ahoyconference.turn}), or C{None}.
    @ivar allowed_remote_networks: remote addresses we may send STUN and
        media to: C{"public"} (globally routed), C{"local"} (the subnets of
        the addresses we gather on) and networks in CIDR notation.
    @ivar udp_port: the one UDP port every member's ICE, DTLS and SRTP
        share (L{ahoyconference.media.udpmux}); 0: a socket per peer
        connection on a port the kernel picks (what a configuration without
        the key gets; the shipped one sets L{ONE_PORT}).
    """

    host_addresses: tuple[str, ...] = ()
    servers: tuple[dict, ...] = ()
    public_address: str | None = None
    turn: TurnSettings | None = None
    allowed_remote_networks: tuple[str, ...] = ("public", "local")
    udp_port: int = 0


ONE_PORT = 10000
"""
The C{[ice] udp_port} of the shipped configuration and the Debian package:
below Linux's ephemeral range (32768-60999), so no outgoing socket can take
it before the server starts, outside C{[sip] rtp_ports}' default range, and
the port operators already know as a conference server's single media port.
"""


@dataclass(frozen=True)
class Limits:
    """
    The C{[limits]} table: every bound the server enforces (each key is
    explained in C{conf/ahoyconference.toml}; 0 switches most off).  The
    bounds of issue 14 (docs/reliability.md, "Attacks and bounds"):
    C{max_queued_requests}/C{max_queued_bytes} (one connection's requests
    waiting behind its slowest: reading pauses at half, 1008 at the whole),
    C{max_peer_connections}/C{max_peer_connections_per_member} (503 beyond),
    the per-connection request rates C{share_rate}, C{media_rate},
    C{mute_rate}, C{description_rate}, C{lock_rate} (503 beyond), and
    C{max_connections_per_ip}/C{max_conferences_per_client} counted per
    client address (IPv6: per /64) with defaults for an office behind one NAT.
    """

    max_conferences: int = 1000
    max_members: int = 5000
    max_members_per_conference: int = 500
    max_message_bytes: int = 1048576
    max_chat_bytes: int = 65536
    max_description_bytes: int = 4096
    max_name_bytes: int = 256
    idle_timeout: float = 300.0
    policy_timeout: float = 10.0
    ice_timeout: float = 30.0
    max_send_buffer_bytes: int = 4194304
    max_queued_requests: int = 64
    max_queued_bytes: int = 2097152
    max_connections_per_ip: int = 1000
    max_conferences_per_client: int = 200
    max_peer_connections: int = 2000
    max_peer_connections_per_member: int = 100
    join_rate: float = 5.0
    chat_rate: float = 20.0
    share_rate: float = 2.0
    media_rate: float = 20.0
    mute_rate: float = 10.0
    description_rate: float = 2.0
    lock_rate: float = 2.0
    password_failures: int = 5
    password_backoff: float = 30.0


@dataclass(frozen=True)
class SipSettings:
    """
    The C{[sip]} table: telephones dial in (docs/sip.md).

    @ivar listen: C{"udp:ADDRESS:PORT"} and C{"tcp:ADDRESS:PORT"} entries.
    @ivar peers: addresses or networks (CIDR) that may send SIP (a PBX or trunk).
    @ivar rtp_address: the address RTP is received on and announced in SDP;
        empty means the first listen address.
    @ivar rtp_ports: the first and last RTP port (one even port per call).
    @ivar max_speakers: how many members a phone's mix decodes at most.
    @ivar session_expires: the session interval (RFC 4028) when the caller asks none.
    @ivar min_se: the shortest session interval taken (RFC 4028 Min-SE).
    @ivar pin_attempts: wrong PINs before the call is ended.
    @ivar auth_username: with C{auth_password}, callers must authenticate
        (SIP digest); empty: the peer list is the only guard.
    @ivar auth_password: the digest password.
    """

    listen: tuple[str, ...] = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060")
    peers: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    rtp_address: str = ""
    rtp_ports: tuple[int, int] = (20000, 20999)
    max_speakers: int = 3
    session_expires: int = 1800
    min_se: int = 90
    pin_attempts: int = 3
    auth_username: str = ""
    auth_password: str = field(default="", repr=False)

    def listenAddresses(self) -> list[tuple[str, str, int]]:
        """C{(transport, address, port)} of every C{listen} entry."""
        out = []
        for entry in self.listen:
            transport, _, rest = entry.partition(":")
            address, _, port = rest.rpartition(":")
            out.append((transport, address.strip("[]"), int(port)))
        return out

    def rtpAddress(self) -> str:
        """Where RTP is received and what SDP announces."""
        return self.rtp_address or self.listenAddresses()[0][1]


@dataclass(frozen=True)
class Config:
    """The whole configuration, frozen."""

    ports: tuple[str, ...] = ()
    #: Origins allowed besides the server's own; C{"*"} is any (unsafe).
    allowed_origins: tuple[str, ...] = ()
    #: Peers whose C{proxy_header} names the client (docs/operations.md).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: C{x-forwarded-for} or C{forwarded} (RFC 7239): the header they write.
    proxy_header: str = "x-forwarded-for"
    ip_to_everyone: bool = False
    limits: Limits = field(default_factory=Limits)
    ice: IceSettings = field(default_factory=IceSettings)
    policy_name: str = "password"
    policy_options: dict = field(default_factory=dict)
    rooms: tuple[ConferenceSettings, ...] = ()
    metrics_enabled: bool = True
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    log_level: str = "info"
    #: The C{[cluster]} table (checked), or C{None}: the server runs alone.
    cluster: dict | None = None
    #: The C{[sip]} table, or C{None}: no SIP (docs/sip.md).
    sip: SipSettings | None = None
    #: C{[media] simulcast}: publish offers ask browsers for three video
    #: layers (docs/architecture.md, "Simulcast").
    simulcast: bool = True
    path: str | None = None

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (command-line overrides)."""
        return replace(self, **changes)


_INT = (int,)
_NUM = (int, float)


def _isType(value, types) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


_TYPE_NAMES = {
    _INT: "an integer",
    _NUM: "a number",
    (bool,): "true or false",
    (str,): "a string",
    (list,): "a list",
    (dict,): "a table",
}

# table -> key -> (types, minimum or None)
SCHEMA: dict[str, dict[str, tuple]] = {
    "server": {
        "ports": ((list,), None),
        "allowed_origins": ((list,), None),
        "trusted_proxies": ((list,), None),
        "proxy_header": ((str,), None),
        "ip_to_everyone": ((bool,), None),
        "log_level": ((str,), None),
    },
    "limits": {
        name: ((_INT if isinstance(default, int) else _NUM), 0)
        for name, default in vars(Limits()).items()
    },
    "ice": {
        "host_addresses": ((list,), None),
        "servers": ((list,), None),
        "public_address": ((str,), None),
        "turn": ((dict,), None),
        "allowed_remote_networks": ((list,), None),
        "udp_port": (_INT, 0),
    },
    "media": {
        "simulcast": ((bool,), None),
    },
    "metrics": {
        "enabled": ((bool,), None),
        "allow": ((list,), None),
    },
    "cluster": {
        "redis": ((str,), None),
        "node_url": ((str,), None),
        "node_id": ((str,), None),
        "ttl": (_NUM, 1),
        "record_ttl": (_NUM, 1),
    },
    "sip": {
        "listen": ((list,), None),
        "peers": ((list,), None),
        "rtp_address": ((str,), None),
        "rtp_ports": ((list,), None),
        "max_speakers": (_INT, 1),
        "session_expires": (_INT, 90),
        "min_se": (_INT, 90),
        "pin_attempts": (_INT, 1),
        "auth_username": ((str,), None),
        "auth_password": ((str,), None),
    },
}

ROOM_KEYS: dict[str, tuple] = {
    "id": (str,),
    "name": (str,),
    "description": (str,),
    "password": (str,),
    "listener_password": (str,),
    "moderator_password": (str,),
    "max_member": _INT,
    "max_video_bitrate": _INT,
}


def _fail(path: str | None, key: str, message: str):
    where = path or "<config>"
    raise ConfigError(f"{where}: {key}: {message}")


def _checkTable(path, tableName, table, schema) -> dict:
    if not isinstance(table, dict):
        _fail(path, f"[{tableName}]", "must be a table")
    out = {}
    for key, value in table.items():
        if key not in schema:
            _fail(path, f"[{tableName}] {key}", f"unknown key (known: {', '.join(sorted(schema))})")
        types, minimum = schema[key]
        if not _isType(value, types):
            _fail(path, f"[{tableName}] {key}", f"must be {_TYPE_NAMES[types]}, not {value!r}")
        if minimum is not None and value < minimum:
            _fail(path, f"[{tableName}] {key}", f"must be at least {minimum}, not {value!r}")
        out[key] = value
    return out


def _strings(path, key, values) -> tuple[str, ...]:
    for v in values:
        if not isinstance(v, str):
            _fail(path, key, f"every entry must be a string, not {v!r}")
    return tuple(values)


#: The headers a trusted reverse proxy may name the client in ([server] proxy_header).
PROXY_HEADERS = ("x-forwarded-for", "forwarded")


def _networks(path, key, values) -> tuple:
    """Addresses or networks (C{"10.0.0.1"}, C{"10.0.0.0/8"}, C{"::1"}) as networks."""
    out = []
    for v in _strings(path, key, values):
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            _fail(path, key, f"{v!r} is not an IP address or network")
    return tuple(out)


def _room(path, index, room) -> ConferenceSettings:
    key = f"[[rooms]] #{index + 1}"
    if not isinstance(room, dict):
        _fail(path, key, "must be a table")
    for name, value in room.items():
        if name not in ROOM_KEYS:
            _fail(path, f"{key} {name}", f"unknown key (known: {', '.join(sorted(ROOM_KEYS))})")
        if not _isType(value, ROOM_KEYS[name]):
            _fail(path, f"{key} {name}", f"must be {_TYPE_NAMES[ROOM_KEYS[name]]}, not {value!r}")
    if not room.get("id"):
        _fail(path, f"{key} id", "is required")
    for name in ("max_member", "max_video_bitrate"):
        if name in room and room[name] < 1:
            _fail(path, f"{key} {name}", "must be at least 1")
    return ConferenceSettings(
        conferenceID=room["id"],
        conferenceName=room.get("name", room["id"]),
        description=room.get("description", ""),
        password=room.get("password", ""),
        listenerPassword=room.get("listener_password", ""),
        moderatorPassword=room.get("moderator_password", ""),
        maxMember=room.get("max_member"),
        maxVideoBitrate=room.get("max_video_bitrate"),
        permanent=True,
    )


# -- [ice.turn]: TURN for clients (docs/operations.md) ----------------------

TURN_KEYS: dict[str, tuple] = {
    "urls": (list,),
    "secret": (str,),
    "secret_file": (str,),
    "ttl": _INT,
}


def _turn(path, table: dict) -> TurnSettings:
    """
    The C{[ice.turn]} table: C{urls} (turn:/turns: URLs), exactly one of
    C{secret} and C{secret_file} (read now; its first line is the secret),
    C{ttl} in seconds (default one day, at least 60).
    """
    for name, value in table.items():
        if name not in TURN_KEYS:
            _fail(path, f"[ice.turn] {name}", f"unknown key (known: {', '.join(sorted(TURN_KEYS))})")
        if not _isType(value, TURN_KEYS[name]):
            _fail(path, f"[ice.turn] {name}",
                  f"must be {_TYPE_NAMES[TURN_KEYS[name]]}, not a {type(value).__name__}")
    urls = _strings(path, "[ice.turn] urls", table.get("urls", []))
    if not urls:
        _fail(path, "[ice.turn] urls", "is required (at least one turn: or turns: URL)")
    for url in urls:
        if not url.startswith(("turn:", "turns:")):
            _fail(path, "[ice.turn] urls", f"{url!r} is not a turn: or turns: URL")
    if ("secret" in table) == ("secret_file" in table):
        _fail(path, "[ice.turn] secret", "give exactly one of secret and secret_file")
    if "secret_file" in table:
        try:
            with open(table["secret_file"], encoding="utf-8") as f:
                secret = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            _fail(path, "[ice.turn] secret_file",
                  f"cannot read {table['secret_file']}: {getattr(e, 'strerror', None) or e}")
        where = "[ice.turn] secret_file"
    else:
        secret, where = table["secret"], "[ice.turn] secret"
    if not secret:
        _fail(path, where, "the secret is empty")
    ttl = table.get("ttl", 86400)
    if ttl < 60:
        _fail(path, "[ice.turn] ttl", f"must be at least 60, not {ttl!r}")
    return TurnSettings(urls=urls, secret=secret.encode("utf-8"), ttl=ttl)


def _sip(path, table) -> SipSettings:
    """The C{[sip]} table, checked (docs/sip.md)."""
    import ipaddress

    sip = _checkTable(path, "sip", table, SCHEMA["sip"])
    listen = _strings(path, "[sip] listen", sip.get("listen", list(SipSettings.listen)))
    if not listen:
        _fail(path, "[sip] listen", "needs at least one address")
    for entry in listen:
        transport, _, rest = entry.partition(":")
        address, colon, port = rest.rpartition(":")
        if transport not in ("udp", "tcp") or not colon or not port.isdigit() \
                or not 0 < int(port) < 65536:
            _fail(path, "[sip] listen", f"{entry!r} is not udp:ADDRESS:PORT or tcp:ADDRESS:PORT")
        try:
            ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            _fail(path, "[sip] listen", f"{address!r} is not an IP address")
    peers = _strings(path, "[sip] peers", sip.get("peers", list(SipSettings.peers)))
    for peer in peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            _fail(path, "[sip] peers", f"{peer!r} is not an address or a network")
    ports = sip.get("rtp_ports", list(SipSettings.rtp_ports))
    if (len(ports) != 2 or not all(_isType(p, _INT) for p in ports)
            or not 1024 <= ports[0] < ports[1] < 65536):
        _fail(path, "[sip] rtp_ports", f"must be [first, last] with 1024 <= first < last < 65536, "
              f"not {ports!r}")
    address = sip.get("rtp_address", "")
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            _fail(path, "[sip] rtp_address", f"{address!r} is not an IP address")
    if bool(sip.get("auth_username")) != bool(sip.get("auth_password")):
        _fail(path, "[sip] auth_password", "auth_username and auth_password go together")
    if sip.get("session_expires", 1800) < sip.get("min_se", 90):
        _fail(path, "[sip] session_expires", "must not be below min_se")
    rest = {k: v for k, v in sip.items() if k not in ("listen", "peers", "rtp_ports")}
    return SipSettings(listen=listen, peers=peers, rtp_ports=(ports[0], ports[1]), **rest)


def parseConfig(data: dict, path: str | None = None) -> Config:
    """
    Validate a parsed TOML document into a L{Config}.

    @raise ConfigError: naming the file and the key at fault.
    """
    known = set(SCHEMA) | {"rooms", "policy"}
    for tableName in data:
        if tableName not in known:
            _fail(path, f"[{tableName}]", f"unknown table (known: {', '.join(sorted(known))})")

    server = _checkTable(path, "server", data.get("server", {}), SCHEMA["server"])
    limitsTable = _checkTable(path, "limits", data.get("limits", {}), SCHEMA["limits"])
    iceTable = _checkTable(path, "ice", data.get("ice", {}), SCHEMA["ice"])
    metrics = _checkTable(path, "metrics", data.get("metrics", {}), SCHEMA["metrics"])
    media = _checkTable(path, "media", data.get("media", {}), SCHEMA["media"])
    cluster = None
    if "cluster" in data:
        cluster = _checkTable(path, "cluster", data["cluster"], SCHEMA["cluster"])
        for name in ("redis", "node_url", "node_id"):
            if not cluster.get(name):
                _fail(path, f"[cluster] {name}", "is required in a cluster")
        if not cluster["redis"].startswith(("redis://", "rediss://", "unix://")):
            _fail(path, "[cluster] redis", "must be a redis://, rediss:// or unix:// URL")
        if not cluster["node_url"].startswith(("ws://", "wss://")):
            _fail(path, "[cluster] node_url", "must be a ws:// or wss:// URL")

    sip = _sip(path, data["sip"]) if "sip" in data else None

    for name in ("max_message_bytes", "max_chat_bytes", "max_members", "max_conferences"):
        if name in limitsTable and limitsTable[name] < 1:
            _fail(path, f"[limits] {name}", "must be at least 1")

    servers = iceTable.get("servers", [])
    for entry in servers:
        if not isinstance(entry, dict) or not isinstance(entry.get("urls"), (str, list)):
            _fail(path, "[ice] servers", f"each entry must be a table with 'urls', not {entry!r}")
        unknown = set(entry) - {"urls", "username", "credential"}
        if unknown:
            _fail(path, "[ice] servers", f"unknown key {sorted(unknown)[0]!r}")


    udpPort = iceTable.get("udp_port", 0)
    if udpPort > 65535:
        _fail(path, "[ice] udp_port", f"must be a UDP port (1-65535) or 0, not {udpPort}")
    allowedNetworks = _strings(path, "[ice] allowed_remote_networks",
                               iceTable.get("allowed_remote_networks", ["public", "local"]))
    for entry in allowedNetworks:
        try:
            if entry not in ("public", "local"):
                ipaddress.ip_network(entry, strict=False)
        except ValueError:
            _fail(path, "[ice] allowed_remote_networks",
                  f"{entry!r} is not 'public', 'local' or a network like 10.0.0.0/8")
    if limitsTable.get("max_queued_bytes", 1) and (
            limitsTable.get("max_queued_bytes", Limits.max_queued_bytes)
            < limitsTable.get("max_message_bytes", Limits.max_message_bytes)):
        _fail(path, "[limits] max_queued_bytes",
              "must be 0 or at least max_message_bytes (one message must fit)")

    proxyHeader = server.get("proxy_header", "x-forwarded-for").lower()
    if proxyHeader not in PROXY_HEADERS:
        _fail(path, "[server] proxy_header",
              f"must be one of {', '.join(PROXY_HEADERS)}, not {proxyHeader!r}")

    logLevel = server.get("log_level", "info")
    if logLevel not in ("debug", "info", "warn", "error", "critical"):
        _fail(path, "[server] log_level",
              f"must be one of debug, info, warn, error, critical, not {logLevel!r}")

    policy = data.get("policy", {})
    if not isinstance(policy, dict):
        _fail(path, "[policy]", "must be a table")
    policy = dict(policy)
    policyName = policy.pop("name", "password")
    if not isinstance(policyName, str):
        _fail(path, "[policy] name", f"must be a string, not {policyName!r}")

    rooms = data.get("rooms", [])
    if not isinstance(rooms, list):
        _fail(path, "rooms", "must be an array of tables ([[rooms]])")
    roomSettings = tuple(_room(path, i, r) for i, r in enumerate(rooms))
    ids = [r.conferenceID for r in roomSettings]
    for rid in ids:
        if ids.count(rid) > 1:
            _fail(path, "[[rooms]] id", f"{rid!r} is defined twice")

    return Config(
        ports=_strings(path, "[server] ports", server.get("ports", [])),
        allowed_origins=_strings(path, "[server] allowed_origins", server.get("allowed_origins", [])),
        trusted_proxies=_networks(path, "[server] trusted_proxies",
                                  server.get("trusted_proxies", [])),
        proxy_header=proxyHeader,
        ip_to_everyone=server.get("ip_to_everyone", False),
        limits=Limits(**limitsTable),
        ice=IceSettings(
            host_addresses=_strings(path, "[ice] host_addresses", iceTable.get("host_addresses", [])),
            servers=tuple(dict(s) for s in servers),
            public_address=iceTable.get("public_address"),
            turn=_turn(path, iceTable["turn"]) if "turn" in iceTable else None,
            allowed_remote_networks=allowedNetworks,
            udp_port=udpPort,
        ),
        policy_name=policyName,
        policy_options=policy,
        rooms=roomSettings,
        metrics_enabled=metrics.get("enabled", True),
        metrics_allow=_strings(path, "[metrics] allow", metrics.get("allow", ["127.0.0.1", "::1"])),
        log_level=logLevel,
        cluster=cluster,
        sip=sip,
        simulcast=media.get("simulcast", True),
        path=path,
    )


def loadConfig(path: str) -> Config:
    """
    Read and validate a configuration file.

    @raise ConfigError: the file cannot be read, is not TOML, or is wrong.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 ({e.reason} at byte {e.start})")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}")
    return parseConfig(data, path)
