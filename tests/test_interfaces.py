"""verifyObject for every @implementer of the signalling core."""

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ahoyconference.config import Config
from ahoyconference.interfaces import (
    IConferencePolicy,
    IMediaEngine,
    IMediaListener,
    IPolicyPlugin,
    ProtocolError,
)
from ahoyconference.nomedia import NoMediaEngine
from ahoyconference.policy import PasswordPolicy, passwordPolicyPlugin
from ahoyconference.service import ConferenceService


class InterfaceTests(unittest.TestCase):
    """Each implementation provides its interface fully."""

    def test_passwordPolicy(self):
        self.assertTrue(verifyObject(IConferencePolicy, PasswordPolicy()))

    def test_passwordPolicyPlugin(self):
        self.assertTrue(verifyObject(IPolicyPlugin, passwordPolicyPlugin))

    def test_noMediaEngine(self):
        self.assertTrue(verifyObject(IMediaEngine, NoMediaEngine()))

    def test_aiortcEngineTakesPhones(self):
        """The aiortc engine provides both engine interfaces (docs/sip.md)."""
        from twisted.internet.task import Clock

        from ahoyconference.config import IceSettings
        from ahoyconference.interfaces import IPlainMediaEngine
        from ahoyconference.media.engine import AiortcMediaEngine

        service = ConferenceService(Config(), Clock(), PasswordPolicy(), NoMediaEngine)
        engine = AiortcMediaEngine(service, IceSettings(host_addresses=("127.0.0.1",)), Clock())
        self.addCleanup(engine._uninstallHosts)
        self.assertTrue(verifyObject(IMediaEngine, engine))
        self.assertTrue(verifyObject(IPlainMediaEngine, engine))
        self.assertFalse(IPlainMediaEngine.providedBy(NoMediaEngine()))

    def test_serviceIsMediaListener(self):
        from twisted.internet.task import Clock

        service = ConferenceService(Config(), Clock(), PasswordPolicy(), NoMediaEngine)
        self.assertTrue(verifyObject(IMediaListener, service))

    def test_noMediaEngineRefuses501(self):
        """The stand-in refuses publishing and subscribing with 501."""
        engine = NoMediaEngine()
        f = self.failureResultOf(engine.publish("m", True, True, 500), ProtocolError)
        self.assertEqual(f.value.status, 501)
        f = self.failureResultOf(engine.subscribe("a", "b", True, True), ProtocolError)
        self.assertEqual(f.value.status, 501)
