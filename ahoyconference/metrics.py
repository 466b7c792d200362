# -*- test-case-name: tests.test_metrics -*-
"""
C{GET /metrics} in the Prometheus text format.

The numbers are read from the service and the media engine when scraped
(L{ServiceCollector}), so nothing is counted twice and the packet path pays
nothing; C{prometheus_client} does the exposition format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from twisted.web.resource import Resource

from ahoyconference.interfaces import Role
from ahoyconference.sockdrops import DropWatch


class ServiceCollector:
    """A custom collector over one L{ConferenceService}."""

    def __init__(self, service):
        self.service = service
        self._udpDrops = DropWatch()

    def collect(self):
        """Yield every metric family, read now."""
        service = self.service
        yield GaugeMetricFamily("ahoy_conferences", "Conferences that exist now.",
                                value=len(service.conferences))
        members = GaugeMetricFamily("ahoy_members", "Members joined now, by role.",
                                    labels=["role"])
        byRole = {role.label: 0 for role in Role}
        for m in service.members.values():
            byRole[m.role.label] += 1
        for role, count in byRole.items():
            members.add_metric([role], count)
        yield members
        yield GaugeMetricFamily("ahoy_connections", "Open WebSocket connections.",
                                value=len(service.sessions))
        stats = service.engine.stats()
        yield GaugeMetricFamily("ahoy_publishers", "Members publishing media.",
                                value=stats["publishers"])
        yield GaugeMetricFamily("ahoy_subscriptions", "Subscriptions to a member's media.",
                                value=stats["subscriptions"])
        pcs = GaugeMetricFamily("ahoy_peer_connections", "Peer connections by state.",
                                labels=["state"])
        for state, count in sorted(stats["peer_connections"].items()):
            pcs.add_metric([state], count)
        yield pcs
        yield CounterMetricFamily("ahoy_forwarded_packets", "RTP packets forwarded.",
                                  value=stats["forwarded_packets"])
        yield CounterMetricFamily("ahoy_forwarded_bytes", "RTP bytes forwarded.",
                                  value=stats["forwarded_bytes"])
        yield CounterMetricFamily("ahoy_dropped_packets", "Incoming RTP/RTCP packets dropped.",
                                  value=stats.get("dropped_packets", 0))
        yield from _mediaCounters(stats)
        udpDrops = self._udpDrops.check()
        if udpDrops is not None:
            yield GaugeMetricFamily(
                "ahoy_udp_receive_drops",
                "Datagrams the kernel dropped on the UDP sockets open now (receive buffer "
                "full: not read fast enough); grows only, on one UDP port.",
                value=udpDrops)
        joins = CounterMetricFamily("ahoy_joins", "Successful joins, by role.", labels=["role"])
        for role in Role:
            joins.add_metric([role.label], service.counters["joins"][role.label])
        yield joins
        refused = CounterMetricFamily("ahoy_refused_joins", "Refused joins, by status.",
                                      labels=["status"])
        for status, count in sorted(service.counters["refused"].items()):
            refused.add_metric([str(status)], count)
        yield refused
        errors = CounterMetricFamily("ahoy_errors", "Error responses, by status.",
                                     labels=["status"])
        for status, count in sorted(service.counters["errors"].items()):
            errors.add_metric([str(status)], count)
        yield errors
        dropped = CounterMetricFamily(
            "ahoy_dropped_connections",
            "WebSocket connections the server dropped, by reason (ping_timeout: no pong).",
            labels=["reason"])
        for reason, count in sorted(service.counters.get("dropped", {}).items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "ahoy_websocket_write_errors",
            "Held WebSocket frames that could not be written to a connection (the first "
            "error is logged).",
            value=sum(service.counters.get("write_errors", {}).values()))
        for name, help, label, key in _REFUSALS:
            family = CounterMetricFamily(name, help, labels=[label])
            for value, count in sorted(service.counters[key].items()):
                family.add_metric([str(value)], count)
            yield family
        sip = getattr(service, "sip", None)
        if sip is not None:
            yield from _sipMetrics(sip)
        directory = getattr(service, "directory", None)
        if directory is not None:
            yield from _clusterMetrics(directory)


#: Counters of refusals and drops (docs/reliability.md): metric, help, label,
#: and the key of C{ConferenceService.counters}.
_REFUSALS = (
    ("ahoy_refused_connections", "WebSocket handshakes refused, by reason "
     "(origin, per_address).", "reason", "refused_connections"),
    ("ahoy_rate_limited", "Requests refused (503) by the client's own rate limit, by request.",
     "request", "rate_limited"),
    ("ahoy_peer_connection_caps", "Requests refused (503) at a peer-connection cap, by scope "
     "(server, member).", "scope", "peer_connection_caps"),
    ("ahoy_backlog", "Per-connection request backlog: reading paused, connections dropped "
     "over the bound, frames not run because their connection was gone.", "event", "backlog"),
)


def _sipMetrics(gateway):
    """The SIP gateway's counters (docs/sip.md)."""
    yield GaugeMetricFamily("ahoy_sip_calls_active", "Phone calls now.", value=len(gateway.calls))
    for name, label, text in (
            ("calls", "what", "Phone calls: total, joined, hung_up, bye_sent, cancelled."),
            ("requests", "method", "SIP requests received, by method."),
            ("responses", "status", "Final SIP responses sent, by status."),
            ("refused", "status", "Calls and requests refused, by SIP status."),
            ("dropped", "kind", "SIP messages and RTP packets dropped, by kind."),
            ("timeouts", "what", "SIP timeouts: ack, session, and requests we sent."),
            ("retransmissions", "what", "Retransmitted requests answered again."),
            ("pin_failures", "what", "Wrong PINs entered."),
            ("auth", "verdict", "Digest authentication of INVITEs: missing, ok, stale, wrong."),
            ("mixer", "what", "Phone mixes: packets decoded, skipped (not among the loudest), "
                              "errors (undecodable), overflow (samples dropped), late_frames.")):
        family = CounterMetricFamily(f"ahoy_sip_{name}", text, labels=[label])
        for key, count in sorted(gateway.counters[name].items(), key=lambda kv: str(kv[0])):
            family.add_metric([str(key)], count)
        yield family


def _clusterMetrics(directory):
    """The cluster directory's state (docs/cluster.md), when there is one."""
    up = GaugeMetricFamily("ahoy_cluster_directory_up",
                           "1 while the cluster directory (Redis) answers.", labels=["node"])
    up.add_metric([directory.nodeID], 1 if directory.reachable else 0)
    yield up
    for name, text in (("redirects", "Joins answered 302 to another node."),
                       ("placed", "Conferences placed on a node by this node."),
                       ("directory_errors", "Failed calls to the cluster directory.")):
        yield CounterMetricFamily(f"ahoy_cluster_{name}", text,
                                  value=directory.counters[name])


_MEDIA_COUNTERS = (
    ("send_errors", "ahoy_send_errors", "RTP packets we could not protect or send."),
    ("nacks_received", "ahoy_nacks_received", "NACK packets received from subscribers."),
    ("retransmitted_packets", "ahoy_retransmitted_packets",
     "Packets resent to subscribers on NACK (RTX or as they were)."),
    ("keyframe_requests", "ahoy_keyframe_requests_sent", "PLIs sent to publishers."),
    ("publisher_nacks_sent", "ahoy_publisher_nacks_sent",
     "NACK packets sent to publishers for gaps in their video."),
    ("publisher_nacked_packets", "ahoy_publisher_nacked_packets",
     "Sequence numbers asked for in NACKs to publishers (each try counts)."),
    ("publisher_packets_recovered", "ahoy_publisher_packets_recovered",
     "Missing packets of publishers recovered by their retransmission (RTX)."),
    ("publisher_packets_reordered", "ahoy_publisher_packets_reordered",
     "Packets of publishers that arrived late on their own (reordered)."),
    ("publisher_packets_given_up", "ahoy_publisher_packets_given_up",
     "Missing packets of publishers given up (no retransmission in time)."),
    ("keyframe_requests_received", "ahoy_keyframe_requests_received",
     "PLI/FIR received from subscribers."),
    ("remb_sent", "ahoy_remb_sent", "REMB packets sent to publishers."),
    ("dropped_candidates", "ahoy_dropped_candidates",
     "Remote ICE candidates dropped from answers (unreachable, outside "
     "[ice] allowed_remote_networks, over the limit)."),
    ("refused_ice_checks", "ahoy_refused_ice_checks",
     "ICE connectivity checks ignored: from outside [ice] allowed_remote_networks."),
)


def _mediaCounters(stats: dict):
    """The media engine's counters of the packet path (docs/architecture.md)."""
    for key, name, documentation in _MEDIA_COUNTERS:
        yield CounterMetricFamily(name, documentation, value=stats.get(key, 0))
    switches = CounterMetricFamily("ahoy_simulcast_switches",
                                   "Simulcast layer switches of subscribers, by direction.",
                                   labels=["direction"])
    for direction in ("up", "down"):
        switches.add_metric([direction], stats.get(f"simulcast_switches_{direction}", 0))
    yield switches
    probes = CounterMetricFamily("ahoy_simulcast_probes",
                                 "Tries of a simulcast subscriber's link with padding at the "
                                 "next layer's bitrate, by outcome (held: it went up).",
                                 labels=["outcome"])
    for outcome in ("held", "failed"):
        probes.add_metric([outcome], stats.get(f"simulcast_probes_{outcome}", 0))
    yield probes
    yield CounterMetricFamily("ahoy_simulcast_padding_packets",
                              "Padding packets sent to simulcast subscribers to try their links.",
                              value=stats.get("simulcast_padding_packets", 0))
    yield GaugeMetricFamily("ahoy_simulcast_publishers",
                            "Publishers whose video comes in simulcast layers.",
                            value=stats.get("simulcast_publishers", 0))
    yield CounterMetricFamily("ahoy_simulcast_unknown_rid",
                              "Simulcast packets dropped: their RID names no offered layer.",
                              value=stats.get("simulcast_unknown_rid", 0))
    refused = CounterMetricFamily("ahoy_retransmissions_refused",
                                  "NACKed packets not resent, by reason (budget, repeat).",
                                  labels=["reason"])
    for reason in ("budget", "repeat"):
        refused.add_metric([reason], stats.get(f"retransmissions_refused_{reason}", 0))
    yield refused
    drops = CounterMetricFamily("ahoy_dropped_packets_by_reason",
                                "Incoming RTP/RTCP packets and datagrams dropped, by reason.",
                                labels=["reason"])
    for reason, count in sorted(stats.get("drops", {}).items()):
        drops.add_metric([reason], count)
    yield drops
    errors = CounterMetricFamily("ahoy_media_errors",
                                 "Unexpected failures on the media path, by where; the first "
                                 "of each kind is logged with its traceback.", labels=["where"])
    for where, count in sorted(stats.get("media_errors", {}).items()):
        errors.add_metric([where], count)
    yield errors


class MetricsResource(Resource):
    """
    Serves the metrics to addresses in C{service.config.metrics_allow}
    (403 for others; an empty list allows everyone).
    """

    isLeaf = True

    def __init__(self, service):
        super().__init__()
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))

    def render_GET(self, request):
        """The metrics, or 403."""
        allow = self.service.config.metrics_allow
        host = getattr(request.getClientAddress(), "host", None)
        if allow and host not in allow:
            request.setResponseCode(403)
            return b"forbidden\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE_PLAIN_0_0_4.encode())
        return generate_latest(self.registry)
