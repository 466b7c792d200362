# -*- test-case-name: tests.test_policy -*-
"""
The default policy (protocol.md 4.2: roles from passwords; who may do what)
and the loading of named policies, at unit level.
"""

from __future__ import annotations

import os

from twisted.internet import task
from twisted.plugin import IPlugin
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ahoyconference import passwords as passwordHashes
from ahoyconference.config import parseConfig
from ahoyconference.interfaces import (
    Action,
    ClientInfo,
    ConferenceSettings,
    IConferencePolicy,
    IPolicyPlugin,
    ProtocolError,
    Role,
)
from ahoyconference.policy import (
    MINIMUM_ROLE,
    PasswordPolicy,
    UnknownPolicy,
    availablePolicies,
    loadPolicy,
    passwordPolicyPlugin,
    passwordRole,
)

CLIENT = ClientInfo(ip="127.0.0.1")
MODERATOR, SPEAKER, LISTENER = Role.MODERATOR, Role.SPEAKER, Role.LISTENER


def keepPluginDirsClean(testCase, *extraDirs: str):
    """
    C{getPlugins} writes a C{dropin.cache} into every plugin directory it
    scans; remove, after the test, every one the test created (in the
    C{ahoyconference.plugins} path and in C{extraDirs}).

    @return: the function that removes them (it may be called earlier too).
    """
    from ahoyconference import plugins

    def caches():
        dirs = set(plugins.__path__) | set(extraDirs)
        return {os.path.join(d, "dropin.cache") for d in dirs
                if os.path.exists(os.path.join(d, "dropin.cache"))}

    before = caches()

    def clean():
        for path in caches() - before:
            os.remove(path)

    testCase.addCleanup(clean)
    return clean


def settings(moderator="", speaker="", listener="") -> ConferenceSettings:
    """A conference with these passwords (C{""} = not set)."""
    return ConferenceSettings(conferenceID="room", conferenceName="room",
                              moderatorPassword=moderator, password=speaker,
                              listenerPassword=listener)


class PasswordRoleTableTests(unittest.TestCase):
    """
    Every row of protocol.md 4.2's table, through L{passwordRole} and
    L{PasswordPolicy.roleFor} (which turns C{None} into 403).
    """

    def assertRole(self, conference, password, expected):
        """Both entry points give C{expected} (a Role, or None for 403)."""
        self.assertIs(passwordRole(conference, password), expected)
        if expected is None:
            e = self.assertRaises(ProtocolError, PasswordPolicy().roleFor,
                                  CLIENT, conference, "joiner", password)
            self.assertEqual(e.status, 403)
        else:
            self.assertIs(PasswordPolicy().roleFor(CLIENT, conference, "joiner", password),
                          expected)

    def test_none(self):
        """No passwords: "" joins as moderator, and no password is wrong."""
        conference = settings()
        self.assertRole(conference, "", MODERATOR)
        self.assertRole(conference, "anything", MODERATOR)
        self.assertRole(conference, "ünïcode", MODERATOR)

    def test_moderator(self):
        """Only a moderator password: "" is a speaker, a wrong one 403."""
        conference = settings(moderator="m-pw")
        self.assertRole(conference, "", SPEAKER)
        self.assertRole(conference, "m-pw", MODERATOR)
        self.assertRole(conference, "wrong", None)
        self.assertRole(conference, "m-pw ", None)

    def test_moderatorSpeaker(self):
        """Moderator and speaker passwords: "" is a listener, a wrong one 403."""
        conference = settings(moderator="m-pw", speaker="s-pw")
        self.assertRole(conference, "", LISTENER)
        self.assertRole(conference, "m-pw", MODERATOR)
        self.assertRole(conference, "s-pw", SPEAKER)
        self.assertRole(conference, "wrong", None)

    def test_speaker(self):
        """Only a speaker password: "" is a listener (the moderator role is closed)."""
        conference = settings(speaker="s-pw")
        self.assertRole(conference, "", LISTENER)
        self.assertRole(conference, "s-pw", SPEAKER)
        self.assertRole(conference, "wrong", None)

    def test_listener(self):
        """A listener password, with or without others: "" and wrong ones get 403."""
        for passwords in [dict(listener="l-pw"),
                          dict(listener="l-pw", speaker="s-pw"),
                          dict(listener="l-pw", moderator="m-pw"),
                          dict(listener="l-pw", speaker="s-pw", moderator="m-pw")]:
            conference = settings(**passwords)
            self.assertRole(conference, "", None)
            self.assertRole(conference, "wrong", None)
            self.assertRole(conference, "l-pw", LISTENER)
            if "speaker" in passwords:
                self.assertRole(conference, "s-pw", SPEAKER)
            if "moderator" in passwords:
                self.assertRole(conference, "m-pw", MODERATOR)

    def test_highestRoleWins(self):
        """A password shared by several roles gives the highest of them."""
        self.assertRole(settings(moderator="x", speaker="x", listener="x"), "x", MODERATOR)
        self.assertRole(settings(speaker="x", listener="x"), "x", SPEAKER)

    def test_unicode(self):
        """Passwords are compared as UTF-8, exactly."""
        conference = settings(speaker="pässwörd")
        self.assertRole(conference, "pässwörd", SPEAKER)
        self.assertRole(conference, "passwort", None)

    def test_constantTime(self):
        """
        Every set password is compared with C{hmac.compare_digest}, whether
        or not an earlier one matched.
        """
        compared = []
        real = passwordHashes.hmac.compare_digest

        def spy(a, b):
            compared.append(b)
            return real(a, b)

        self.patch(passwordHashes.hmac, "compare_digest", spy)
        conference = settings(moderator="m-pw", speaker="s-pw", listener="l-pw")
        for given in ("m-pw", "l-pw", "wrong"):
            del compared[:]
            passwordRole(conference, given)
            self.assertEqual(sorted(compared), [b"l-pw", b"m-pw", b"s-pw"])


class PasswordPolicyTests(unittest.TestCase):
    """L{PasswordPolicy}: creating and who may do what."""

    def test_interface(self):
        """It provides L{IConferencePolicy}; its plugin L{IPolicyPlugin} and C{IPlugin}."""
        self.assertTrue(verifyObject(IConferencePolicy, PasswordPolicy()))
        self.assertTrue(verifyObject(IPolicyPlugin, passwordPolicyPlugin))
        self.assertTrue(IPlugin.providedBy(passwordPolicyPlugin))

    def test_mayCreate(self):
        """Anyone may create any conference, unchanged."""
        self.assertIsNone(PasswordPolicy().mayCreate(CLIENT, settings(moderator="m")))

    def test_everyActionHasAMinimum(self):
        """L{MINIMUM_ROLE} names every L{Action}."""
        self.assertEqual(set(MINIMUM_ROLE), set(Action))

    def test_mayRequest(self):
        """The table of protocol.md 0: chat and receive for all, send for speakers, the rest moderators."""
        allowed = {
            LISTENER: {Action.CHAT, Action.SUBSCRIBE},
            SPEAKER: {Action.CHAT, Action.SUBSCRIBE, Action.SHARE},
            MODERATOR: set(Action),
        }
        p = PasswordPolicy()
        for role, actions in allowed.items():
            for action in Action:
                self.assertEqual(p.mayRequest(CLIENT, role, action, settings()),
                                 action in actions, (role, action))


class LoadPolicyTests(unittest.TestCase):
    """L{availablePolicies} and L{loadPolicy} with the shipped plugins."""

    def setUp(self):
        keepPluginDirsClean(self)

    def test_shipped(self):
        """The built-in password policy and the two shipped plugins are found."""
        found = availablePolicies()
        self.assertTrue({"password", "token", "allowlist"} <= set(found), sorted(found))
        for name, plugin in found.items():
            self.assertTrue(verifyObject(IPolicyPlugin, plugin), name)
            self.assertEqual(plugin.name, name)

    def test_password(self):
        """C{loadPolicy("password", {})} gives a L{PasswordPolicy}."""
        self.assertIsInstance(loadPolicy("password", {}, task.Clock()), PasswordPolicy)

    def test_passwordTakesNoOptions(self):
        """Options for the password policy are an error naming the key."""
        e = self.assertRaises(ValueError, loadPolicy, "password", {"secret": "x"}, task.Clock())
        self.assertIn("[policy] secret", str(e))

    def test_unknown(self):
        """An unknown name raises L{UnknownPolicy} listing the known ones."""
        e = self.assertRaises(UnknownPolicy, loadPolicy, "ldap", {}, task.Clock())
        self.assertIn("'ldap'", str(e))
        for name in ("allowlist", "password", "token"):
            self.assertIn(name, str(e))

    def test_fromConfig(self):
        """The [policy] table of the config names the policy and carries its options."""
        config = parseConfig({"policy": {"name": "allowlist", "conferences": ["team-*"]}})
        p = loadPolicy(config.policy_name, config.policy_options, task.Clock())
        self.assertEqual(p.name, "allowlist")
        self.assertIsNone(p.mayCreate(CLIENT, ConferenceSettings("team-a", "team-a")))
        e = self.assertRaises(ProtocolError, p.mayCreate, CLIENT, ConferenceSettings("x", "x"))
        self.assertEqual(e.status, 403)
