# -*- test-case-name: tests.test_plugins -*-
"""
The C{allowlist} policy: roles from the passwords, as with the default policy
(protocol.md 4.2), but only some addresses may create (or join) conferences,
and only some conference IDs may be created.

Configuration (give at least one key; a key left out restricts nothing)::

    [policy]
    name = "allowlist"
    create_networks = ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]
    conferences = ["standup", "team-*"]    # IDs or shell-style patterns
    join_networks = ["10.0.0.0/8"]

Addresses are the client's, as in C{ClientInfo.ip}: the TCP peer, or behind a
reverse proxy listed in C{[server] trusted_proxies} the address the proxy
names.  An IPv4 address seen as IPv6 (C{::ffff:10.1.2.3}) matches
the IPv4 networks too.  Refusals are 403.
"""

from __future__ import annotations

import fnmatch
import ipaddress

from zope.interface import implementer

from ahoyconference.interfaces import (
    ClientInfo,
    ConferenceSettings,
    IAddressTrustingPolicy,
    IPolicyPlugin,
    ProtocolError,
)
from ahoyconference.policy import PasswordPolicy

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def addressIn(ip: str, networks: tuple[_Network, ...]) -> bool:
    """
    Is this address in one of these networks?  An unreadable address is in
    none; an IPv4-mapped IPv6 address is also tried as IPv4.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    candidates = [address]
    if address.version == 6 and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a in net for a in candidates for net in networks if a.version == net.version)


@implementer(IAddressTrustingPolicy)
class AllowlistPolicy(PasswordPolicy):
    """
    L{PasswordPolicy} restricted by client address and conference ID.  It
    trusts addresses (L{IAddressTrustingPolicy}): the server will not run it
    with C{allowed_origins = ["*"]}.

    @param createNetworks: who may create, or C{None} for anyone.
    @param conferences: the conference IDs (or fnmatch patterns) that may be
        created, or C{None} for any.
    @param joinNetworks: who may join, or C{None} for anyone.
    """

    name = "allowlist"

    def __init__(self, createNetworks=None, conferences=None, joinNetworks=None):
        self.createNetworks = None if createNetworks is None else tuple(createNetworks)
        self.conferences = None if conferences is None else tuple(conferences)
        self.joinNetworks = None if joinNetworks is None else tuple(joinNetworks)

    def mayCreate(self, client: ClientInfo, settings: ConferenceSettings):
        """403 unless the client's address and the conference ID are allowed."""
        if self.createNetworks is not None and not addressIn(client.ip, self.createNetworks):
            raise ProtocolError(403, detail="this address may not create conferences")
        if self.conferences is not None and not any(
                fnmatch.fnmatchcase(settings.conferenceID, pattern) for pattern in self.conferences):
            raise ProtocolError(403, detail="this conference ID may not be created")
        return None

    def roleFor(self, client: ClientInfo, settings: ConferenceSettings, name: str, password: str):
        """403 unless the client's address may join; else the password's role."""
        if self.joinNetworks is not None and not addressIn(client.ip, self.joinNetworks):
            raise ProtocolError(403, detail="this address may not join")
        return super().roleFor(client, settings, name, password)


def _networks(key: str, value) -> tuple[_Network, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"[policy] {key}: must be a non-empty list of networks "
                         f"(leave it out to allow every address)")
    networks = []
    for entry in value:
        if not isinstance(entry, str):
            raise ValueError(f"[policy] {key}: every entry must be a string, not {entry!r}")
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as e:
            raise ValueError(f"[policy] {key}: {e}")
    return tuple(networks)


@implementer(IPolicyPlugin)
class AllowlistPolicyPlugin:
    """Makes an L{AllowlistPolicy} from the C{[policy]} table."""

    name = "allowlist"
    description = ("Roles from passwords; only listed networks may create (or join), "
                   "only listed conference IDs may be created.")

    def makePolicy(self, options: dict, reactor) -> AllowlistPolicy:
        """
        @param options: any of C{create_networks}, C{conferences}, C{join_networks}.
        @raise ValueError: naming the C{[policy]} key at fault.
        """
        known = ("conferences", "create_networks", "join_networks")
        for key in options:
            if key not in known:
                raise ValueError(f"[policy] {key}: unknown key for the allowlist policy "
                                 f"(known: {', '.join(known)})")
        if not options:
            raise ValueError(f"[policy] create_networks: the allowlist policy needs at least "
                             f"one of {', '.join(known)}")
        conferences = options.get("conferences")
        if conferences is not None:
            if not isinstance(conferences, list) or not conferences or not all(
                    isinstance(c, str) and c for c in conferences):
                raise ValueError("[policy] conferences: must be a non-empty list of "
                                 "conference IDs or patterns")
        return AllowlistPolicy(
            createNetworks=(_networks("create_networks", options["create_networks"])
                            if "create_networks" in options else None),
            conferences=conferences,
            joinNetworks=(_networks("join_networks", options["join_networks"])
                          if "join_networks" in options else None),
        )


allowlistPolicyPlugin = AllowlistPolicyPlugin()
