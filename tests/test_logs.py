"""Our loggers pass a level filter: debug events stay out of twistd's log unless asked for."""

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from ahoyconference import logs


class LevelTests(unittest.TestCase):
    """L{logs.logger} and L{logs.setLevel}."""

    def setUp(self):
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.addCleanup(logs.setLevel, "info")

    def test_infoByDefault(self):
        log = logs.logger("ahoyconference.test")
        log.debug("hidden {x}", x=1)
        log.info("shown {x}", x=2)
        self.assertEqual([e["x"] for e in self.events], [2])
        self.assertEqual(self.events[0]["log_namespace"], "ahoyconference.test")

    def test_setLevel(self):
        log = logs.logger("ahoyconference.test")
        logs.setLevel("debug")
        log.debug("now shown {x}", x=1)
        logs.setLevel("error")
        log.warn("hidden {x}", x=2)
        log.error("shown {x}", x=3)
        self.assertEqual([e["x"] for e in self.events], [1, 3])
