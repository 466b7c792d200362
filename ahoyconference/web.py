# -*- test-case-name: tests.test_api -*-
"""
One L{Site} per port: C{GET /} serves the browser client (C{static/}),
C{GET /metrics} the metrics, and a WebSocket upgrade on any path reaches the
conference protocol.
"""

from __future__ import annotations

import os

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File

from ahoyconference.metrics import MetricsResource
from ahoyconference.protocol import ConferenceFactory

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def _isUpgrade(request) -> bool:
    upgrade = request.getHeader(b"upgrade") or b""
    return upgrade.lower() == b"websocket"


class RootResource(Resource):
    """Routes WebSocket upgrades (any path) to the protocol, the rest to files."""

    def __init__(self, websocket: Resource, static: Resource, metrics: Resource | None):
        super().__init__()
        self.websocket = websocket
        self.static = static
        self.metrics = metrics

    def getChildWithDefault(self, path, request):
        """Upgrade → WebSocket; /metrics; else the static files."""
        if _isUpgrade(request):
            return self.websocket
        if path == b"metrics" and self.metrics is not None:
            return self.metrics
        if path == b"":
            return self
        return self.static.getChildWithDefault(path, request)

    def render(self, request):
        """C{/} itself: the upgrade, or index.html."""
        if _isUpgrade(request):
            return self.websocket.render(request)
        request.setHeader(b"Cache-Control", b"no-cache")
        return self.static.getChildWithDefault(b"index.html", request).render(request)


def makeSite(service) -> Site:
    """The L{Site} to serve on every port of this service."""
    factory = ConferenceFactory(service)
    metrics = MetricsResource(service) if service.config.metrics_enabled else None
    static = File(STATIC)
    static.indexNames = ["index.html"]
    site = Site(RootResource(WebSocketResource(factory), static, metrics))
    site.displayTracebacks = False
    site.conferenceFactory = factory
    return site
