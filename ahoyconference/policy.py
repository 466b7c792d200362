# -*- test-case-name: tests.test_policy -*-
"""
Who may join as what: the default L{PasswordPolicy} (protocol.md 4.2) and the
loading of named policy plugins (L{IPolicyPlugin}) with
C{twisted.plugin.getPlugins} from the C{ahoyconference.plugins} package.
"""

from __future__ import annotations

from zope.interface import implementer

from ahoyconference import passwords
from ahoyconference.interfaces import (
    Action,
    ClientInfo,
    ConferenceSettings,
    IAddressTrustingPolicy,
    IConferencePolicy,
    IPolicyPlugin,
    ProtocolError,
    Role,
)

#: What each role may do by default; anything not named needs a moderator.
MINIMUM_ROLE = {
    Action.CHAT: Role.LISTENER,
    Action.SUBSCRIBE: Role.LISTENER,
    Action.SHARE: Role.SPEAKER,
    Action.KICK: Role.MODERATOR,
    Action.LOCK: Role.MODERATOR,
    Action.DESCRIBE: Role.MODERATOR,
    Action.MUTE_OTHER: Role.MODERATOR,
}


def roleAllows(role: Role, action: Action) -> bool:
    """May a member with this role do this, by L{MINIMUM_ROLE}?"""
    return role >= MINIMUM_ROLE.get(action, Role.MODERATOR)


def _same(given: str, expected: str) -> bool:
    # A conference hosted from the cluster directory keeps hashes (docs/cluster.md).
    return passwords.matches(given, expected)


def passwordRole(settings: ConferenceSettings, password: str) -> Role | None:
    """
    The role protocol.md 4.2 gives this password, or C{None} (403).

    Every set password is compared, in constant time, whatever matches first.
    A role without a password is open (matches C{""}) only if no role below it
    has one; the moderator role only if the conference has no password at all,
    and then any password given joins as moderator ("none is wrong").
    """
    given = password
    byRole = [
        (Role.MODERATOR, settings.moderatorPassword),
        (Role.SPEAKER, settings.password),
        (Role.LISTENER, settings.listenerPassword),
    ]
    matched = [role for role, secret in byRole if secret and _same(given, secret)]
    if matched:
        return max(matched)
    anyPassword = any(secret for _, secret in byRole)
    if not anyPassword:
        # No password at all: everyone is a moderator, and no password is wrong.
        return Role.MODERATOR
    if password:
        return None
    # No password given: the highest open role.
    for index, (role, secret) in enumerate(byRole):
        below = byRole[index + 1:]
        if role is Role.MODERATOR:
            continue
        if not secret and not any(s for _, s in below):
            return role
    return None


@implementer(IConferencePolicy)
class PasswordPolicy:
    """
    The default policy: anyone may create a conference, roles come from the
    passwords (L{passwordRole}), and L{MINIMUM_ROLE} says who may do what.
    """

    name = "password"

    def mayCreate(self, client: ClientInfo, settings: ConferenceSettings):
        """Anyone may create a conference, as asked."""
        return None

    def roleFor(self, client: ClientInfo, settings: ConferenceSettings, name: str, password: str):
        """The role of L{passwordRole}; 403 when the password matches none."""
        role = passwordRole(settings, password)
        if role is None:
            raise ProtocolError(403)
        return role

    def mayRequest(self, client: ClientInfo, role: Role, action: Action, settings):
        """Allowed when the role is at least L{MINIMUM_ROLE} for the action."""
        return roleAllows(role, action)


@implementer(IPolicyPlugin)
class _PasswordPolicyPlugin:
    name = "password"
    description = "Roles from the conference passwords (protocol.md 4.2)."

    def makePolicy(self, options: dict, reactor):
        if options:
            raise ValueError(f"[policy] {sorted(options)[0]}: the password policy takes no options")
        return PasswordPolicy()


passwordPolicyPlugin = _PasswordPolicyPlugin()


class UnknownPolicy(Exception):
    """No policy plugin has that name; the message lists the known ones."""


def availablePolicies() -> dict[str, object]:
    """
    Every L{IPolicyPlugin} found with C{getPlugins} in C{ahoyconference.plugins}
    (which extends its path over every C{ahoyconference/plugins} directory on
    C{sys.path}), plus the built-in password policy.
    """
    from twisted.plugin import getPlugins, pluginPackagePaths

    from ahoyconference import plugins

    # The package extended its __path__ when it was imported; pick up plugin
    # directories put on sys.path since then too.
    for path in pluginPackagePaths(plugins.__name__):
        if path not in plugins.__path__:
            plugins.__path__.append(path)
    found: dict[str, object] = {"password": passwordPolicyPlugin}
    for plugin in getPlugins(IPolicyPlugin, plugins):
        found.setdefault(plugin.name, plugin)
    return found


def loadPolicy(name: str, options: dict, reactor) -> IConferencePolicy:
    """
    Make the named policy.

    @raise UnknownPolicy: no plugin has that name.
    @raise ValueError: the plugin refused its options, or made no policy.
    """
    known = availablePolicies()
    plugin = known.get(name)
    if plugin is None:
        raise UnknownPolicy(
            f"unknown policy {name!r}; known policies: {', '.join(sorted(known))}"
        )
    made = plugin.makePolicy(dict(options), reactor)
    policy = IConferencePolicy(made, None)
    if policy is None:
        raise ValueError(f"the {name!r} policy plugin made {made!r}, not an IConferencePolicy")
    return policy


def checkOrigins(policy: IConferencePolicy, allowedOrigins: tuple[str, ...]) -> None:
    """
    A policy that trusts client addresses (L{IAddressTrustingPolicy}) with
    every Origin allowed would let any web page a user visits act from the
    user's address (docs/operations.md, "Origins").

    @raise ValueError: one line saying so, naming the key.
    """
    if "*" in allowedOrigins and IAddressTrustingPolicy.providedBy(policy):
        raise ValueError(
            f'[server] allowed_origins: "*" (any web page) cannot be used with the '
            f"{policy.name!r} policy, which trusts client addresses; list the Origins "
            f"of your pages instead")
