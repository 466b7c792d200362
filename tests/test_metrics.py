"""GET /metrics: Prometheus text that moves as members join, refusals happen, and the allow-list."""

from __future__ import annotations

import re

from twisted.trial import unittest

from tests.helpers import Server, asyncTest, createAndJoin, join, testConfig
from tests.test_api import _httpGet


def value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample, or fail."""
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)$"
    m = re.search(pattern, text, re.M)
    if m is None:
        raise AssertionError(f"{name}{{{labels}}} not in:\n{text}")
    return float(m.group(1))


class MetricsTests(unittest.TestCase):
    """The metrics over a real HTTP request."""

    @asyncTest
    async def test_metricsMove(self):
        s = await Server().start()
        clients = []
        try:
            body = (await _httpGet(s.http, "/metrics")).decode()
            self.assertIn("200 OK", body.splitlines()[0])
            self.assertIn("text/plain", body)
            self.assertEqual(value(body, "ahoy_conferences"), 0)
            self.assertEqual(value(body, "ahoy_members", 'role="moderator"'), 0)

            a, _ = await createAndJoin(s.url, moderatorPassword="m", joinPassword="m")
            b, _ = await join(s.url)
            c, r = await join(s.url, password="wrong")
            clients += [a, b, c]
            self.assertEqual(r["status"], 403)
            body = (await _httpGet(s.http, "/metrics")).decode()
            self.assertEqual(value(body, "ahoy_conferences"), 1)
            self.assertEqual(value(body, "ahoy_members", 'role="moderator"'), 1)
            self.assertEqual(value(body, "ahoy_members", 'role="speaker"'), 1)
            self.assertEqual(value(body, "ahoy_connections"), 3)
            self.assertEqual(value(body, "ahoy_refused_joins_total", 'status="403"'), 1)
            self.assertEqual(value(body, "ahoy_errors_total", 'status="403"'), 1)
            self.assertEqual(value(body, "ahoy_joins_total", 'role="speaker"'), 1)
            for name in ("ahoy_publishers", "ahoy_subscriptions", "ahoy_forwarded_packets_total",
                         "ahoy_forwarded_bytes_total", "ahoy_send_errors_total",
                         "ahoy_nacks_received_total", "ahoy_retransmitted_packets_total",
                         "ahoy_keyframe_requests_sent_total", "ahoy_remb_sent_total",
                         "ahoy_refused_ice_checks_total", "ahoy_dropped_candidates_total"):
                value(body, name)
            await b.close()
            clients.remove(b)
            body = (await _httpGet(s.http, "/metrics")).decode()
            self.assertEqual(value(body, "ahoy_members", 'role="speaker"'), 0)
        finally:
            for client in clients:
                await client.close()
            await s.stop()

    @asyncTest
    async def test_allowList(self):
        """Addresses not on [metrics] allow get 403."""
        s = await Server(config=testConfig(metrics_allow=("10.9.9.9",))).start()
        try:
            body = (await _httpGet(s.http, "/metrics")).decode()
            self.assertIn("403", body.splitlines()[0])
            self.assertNotIn("ahoy_conferences", body)
        finally:
            await s.stop()
