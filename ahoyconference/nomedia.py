# -*- test-case-name: tests.test_api -*-
"""
L{NoMediaEngine}: an L{IMediaEngine} without media: sharing and subscribing
answer 501.

The tests' in-process server (C{tests/helpers.py}) uses it for the tests
that need only signalling.  C{twistd ahoyconference} always runs aiortc's
engine (L{ahoyconference.media}): there is no configuration key that turns
media off.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from ahoyconference.interfaces import IMediaEngine, ProtocolError


@implementer(IMediaEngine)
class NoMediaEngine:
    """
    Refuses every media request with 501 (not implemented).

    @param listener: unused (it has nothing to tell); accepted so that the
        class itself is an engine factory for L{ConferenceService}.
    """

    def __init__(self, listener=None):
        pass

    def publish(self, memberID, audio, video, maxVideoBitrate, simulcast=False):
        """@return: a Deferred failing with 501."""
        return defer.fail(ProtocolError(501))

    def acceptPublishAnswer(self, memberID, sdp):
        """@return: a Deferred failing with 501."""
        return defer.fail(ProtocolError(501))

    def unpublish(self, memberID):
        """Nothing is published."""

    def subscribe(self, subscriberID, publisherID, audio, video, quality="high"):
        """@return: a Deferred failing with 501."""
        return defer.fail(ProtocolError(501))

    def setQuality(self, subscriberID, publisherID, quality):
        """@return: C{False}: there are no subscriptions."""
        return False

    def acceptSubscribeAnswer(self, subscriberID, publisherID, sdp):
        """@return: a Deferred failing with 501."""
        return defer.fail(ProtocolError(501))

    def unsubscribe(self, subscriberID, publisherID):
        """Nothing is subscribed."""

    def setForwarding(self, publisherID, kind, enabled):
        """Nothing is forwarded."""

    def isPublishing(self, publisherID, kind):
        """Nobody publishes."""
        return False

    def removeMember(self, memberID):
        """Nothing to free."""

    def peerConnections(self, memberID=None):
        """None."""
        return 0

    def stats(self):
        """All zero."""
        return {"publishers": 0, "subscriptions": 0, "forwarded_packets": 0,
                "forwarded_bytes": 0, "dropped_packets": 0, "peer_connections": {}}

    def close(self):
        """@return: a fired Deferred."""
        return defer.succeed(None)
