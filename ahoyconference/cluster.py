# -*- test-case-name: tests.test_cluster -*-
"""
The cluster directory: several server processes (nodes) share one Redis, and
each conference lives on exactly one node (docs/cluster.md).

Keys (all under C{ahoy:}):

  - C{ahoy:node:<nodeID>}: the node's URL and load, as JSON, with a TTL of
    C{[cluster] ttl} seconds; the node's heartbeat (every third of the TTL)
    writes it again.  A node whose key is gone is dead.
  - C{ahoy:conf:<conferenceID>}: the conference's parameters as created
    (passwords as salted hashes, L{ahoyconference.passwords}), written once
    with C{SET NX} so that an ID is unique across the cluster.  It outlives
    its node (C{[cluster] record_ttl}, renewed while the conference is
    hosted; permanent rooms have none), so that members who come back after
    a node died re-create the conference elsewhere.
  - C{ahoy:host:<conferenceID>}: the node hosting it, with the node's TTL,
    renewed by that node's heartbeat.  Absent: the conference is placed
    again, on the least loaded live node, by the next join.

Redis is reached with redis-py's asyncio client on the reactor's own asyncio
loop.  When it cannot be reached, L{RedisDirectory} answers 503 (creates and
joins for conferences this node does not host), logs one line per episode,
and its heartbeat keeps trying; when Redis is back, the heartbeat publishes
again every conference this node hosts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, replace

from twisted.application.service import Service
from twisted.internet import defer, task
from zope.interface import implementer

from ahoyconference import passwords
from ahoyconference.interfaces import ConferenceSettings, IConferenceDirectory, ProtocolError
from ahoyconference.logs import logger

_log = logger(__name__)

_PASSWORD_FIELDS = ("password", "listenerPassword", "moderatorPassword")

#: Set the key to ARGV[2] (with TTL ARGV[3]) if it is absent or holds ARGV[1].
_TAKE_OVER = """
local current = redis.call('get', KEYS[1])
if current == false or current == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""

#: Delete the key if it holds ARGV[1].
_DELETE_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class ClusterSettings:
    """
    The C{[cluster]} table.

    @ivar redis: the directory's URL (C{redis://host:port/db}).
    @ivar node_url: the public WebSocket URL of this node (the C{url} of a 302).
    @ivar node_id: this node's unique name.
    @ivar ttl: seconds after which a silent node counts as dead.
    @ivar record_ttl: seconds a conference's parameters stay in the
        directory after its node stopped renewing them.
    """

    redis: str
    node_url: str
    node_id: str
    ttl: float = 6.0
    record_ttl: float = 86400.0


def storedSettings(settings: ConferenceSettings) -> dict:
    """A conference's parameters as the directory keeps them: passwords hashed."""
    record = asdict(settings)
    for name in _PASSWORD_FIELDS:
        if not passwords.isHashed(record[name]):
            record[name] = passwords.hashPassword(record[name])
    return record


def settingsFrom(record: dict) -> ConferenceSettings:
    """The L{ConferenceSettings} of a stored record (passwords stay hashed)."""
    known = ConferenceSettings.__dataclass_fields__
    return ConferenceSettings(**{k: v for k, v in record.items() if k in known})


def loadScore(load: dict) -> float:
    """
    How busy a node is, for placing conferences: its members, plus its
    forwarded packets per second over 100 (one member's media is about that).
    """
    return float(load.get("members", 0)) + float(load.get("pps", 0)) / 100.0


@implementer(IConferenceDirectory)
class RedisDirectory(Service):
    """
    The directory in Redis, and this node's heartbeat.

    @param settings: the L{ClusterSettings}.
    @param clock: an C{IReactorTime} for the heartbeat.
    @param load: called each heartbeat; returns C{(stats, hostedIDs)}:
        C{stats} a dict with C{members}, C{conferences} and
        C{forwarded_packets} (a running total), C{hostedIDs} the IDs of the
        conferences this node hosts.
    @param rooms: the permanent rooms of the configuration, published at
        start and after every outage (the configuration is their source).
    @param client: a redis-py asyncio client (made from C{settings.redis}
        when not given).
    """

    def __init__(self, settings: ClusterSettings, clock, load, rooms=(), client=None):
        self.settings = settings
        self.nodeID = settings.node_id
        self.clock = clock
        self._load = load
        self._rooms = tuple(rooms)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                settings.redis, socket_timeout=1.0, socket_connect_timeout=1.0,
                retry_on_timeout=False, decode_responses=True)
        self._redis = client
        self._records: dict[str, dict] = {}    # hosted here: the stored form
        self._beat = None
        self._beating = False
        self._published = False
        self.reachable = True
        self.counters = {"directory_errors": 0, "redirects": 0, "placed": 0}
        self._lastPackets = None
        self._lastBeat = None
        self._lastCpu = None
        self.load: dict = {}

    @property
    def safeURL(self) -> str:
        """The directory's URL without its password, for logs."""
        return _safeURL(self.settings.redis)

    # -- keys ------------------------------------------------------------------

    @staticmethod
    def _node(nodeID: str) -> str:
        return f"ahoy:node:{nodeID}"

    @staticmethod
    def _conf(cid: str) -> str:
        return f"ahoy:conf:{cid}"

    @staticmethod
    def _host(cid: str) -> str:
        return f"ahoy:host:{cid}"

    def _ttl(self) -> int:
        return max(1, round(self.settings.ttl))

    # -- service ---------------------------------------------------------------

    def startService(self):
        """Start the heartbeat (the first beat registers this node)."""
        super().startService()
        self._beat = task.LoopingCall(self.heartbeat)
        self._beat.clock = self.clock
        self._beat.start(max(0.2, self.settings.ttl / 3), now=True)

    def stopService(self):
        """Stop beating, take this node out of the directory, close the client."""
        super().stopService()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        return self._call(self._leave(), quiet=True)

    async def _leave(self):
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(self._node(self.nodeID))
            for cid in list(self._records):
                pipe.eval(_DELETE_IF, 1, self._host(cid), self.nodeID)
            await pipe.execute()
        finally:
            await self._redis.aclose()

    # -- errors ----------------------------------------------------------------

    def _call(self, coro, quiet: bool = False) -> defer.Deferred:
        """Run a coroutine; a Redis failure becomes 503 (logged once per outage)."""
        d = defer.Deferred.fromFuture(asyncio.ensure_future(coro))

        def failed(f):
            if f.check(ProtocolError):
                return f
            self._unreachable(f.value)
            if quiet:
                return None
            raise ProtocolError(503, detail="the cluster directory is unreachable", quiet=True)

        d.addCallbacks(self._reached, failed)
        return d

    def _reached(self, result):
        if not self.reachable:
            self.reachable = True
            _log.info("cluster directory {url} reachable again", url=_safeURL(self.settings.redis))
        return result

    def _unreachable(self, error) -> None:
        self.counters["directory_errors"] += 1
        if self.reachable:
            self.reachable = False
            self._published = False
            _log.error("cluster directory {url} unreachable ({error}): creates and joins for "
                       "conferences of other nodes answer 503 until it is back",
                       url=_safeURL(self.settings.redis), error=type(error).__name__)

    # -- heartbeat -------------------------------------------------------------

    def heartbeat(self) -> defer.Deferred | None:
        """Register this node with its load; renew what it hosts."""
        if self._beating:
            return None
        self._beating = True
        d = self._call(self._heartbeat(), quiet=True)

        def done(result):
            self._beating = False
            return result

        return d.addBoth(done)

    def _measure(self) -> dict:
        stats, hosted = self._load()
        now = self.clock.seconds()
        cpu = time.process_time()
        packets = stats.get("forwarded_packets", 0)
        pps = cpuShare = 0.0
        if self._lastBeat is not None and now > self._lastBeat:
            pps = max(0.0, (packets - self._lastPackets) / (now - self._lastBeat))
            cpuShare = max(0.0, (cpu - self._lastCpu) / (now - self._lastBeat))
        self._lastBeat, self._lastPackets, self._lastCpu = now, packets, cpu
        self.load = {"url": self.settings.node_url, "members": stats.get("members", 0),
                     "conferences": stats.get("conferences", 0), "pps": round(pps, 1),
                     "cpu": round(cpuShare, 3), "pid": os.getpid()}
        return {"load": self.load, "hosted": list(hosted)}

    async def _heartbeat(self):
        measured = self._measure()
        ttl = self._ttl()
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._node(self.nodeID), json.dumps(measured["load"]), ex=ttl)
        for cid in measured["hosted"]:
            pipe.set(self._host(cid), self.nodeID, ex=ttl)
            record = self._records.get(cid)
            if record is not None and not record.get("permanent"):
                pipe.expire(self._conf(cid), self._recordTTL())
        if not self._published:
            for room in self._rooms:
                pipe.set(self._conf(room.conferenceID), json.dumps(storedSettings(room)))
            for cid, record in self._records.items():
                pipe.set(self._conf(cid), json.dumps(record), nx=True,
                         ex=None if record.get("permanent") else self._recordTTL())
        await pipe.execute()
        self._published = True

    def _recordTTL(self) -> int:
        return max(1, round(self.settings.record_ttl))

    async def _liveNodes(self) -> dict[str, dict]:
        keys = [k async for k in self._redis.scan_iter(match="ahoy:node:*", count=1000)]
        nodes = {}
        if keys:
            for key, value in zip(keys, await self._redis.mget(keys), strict=True):
                if value is not None:
                    try:
                        nodes[key[len("ahoy:node:"):]] = json.loads(value)
                    except ValueError:
                        continue
        if self.load:
            nodes[self.nodeID] = self.load  # our own, fresher than the stored copy
        else:
            nodes.setdefault(self.nodeID, {"url": self.settings.node_url})
        return nodes

    @staticmethod
    def _leastLoaded(nodes: dict[str, dict]) -> str:
        return min(nodes, key=lambda n: (loadScore(nodes[n]), n))

    # -- IConferenceDirectory --------------------------------------------------

    def create(self, settings: ConferenceSettings) -> defer.Deferred:
        """See L{IConferenceDirectory.create}."""
        return self._call(self._create(settings))

    async def _create(self, settings: ConferenceSettings):
        record = storedSettings(settings)
        nodes = await self._liveNodes()
        target = self._leastLoaded(nodes)
        created = await self._redis.set(
            self._conf(settings.conferenceID), json.dumps(record), nx=True,
            ex=None if settings.permanent else self._recordTTL())
        if not created:
            raise ProtocolError(486, reason="conference exists")
        await self._redis.set(self._host(settings.conferenceID), target, ex=self._ttl())
        self.counters["placed"] += 1
        _log.info("conference {conference_id} placed on node {node}",
                  conference_id=settings.conferenceID, node=target)
        if target == self.nodeID:
            self._records[settings.conferenceID] = record
            return None
        return nodes[target]["url"]

    def locate(self, conferenceID: str) -> defer.Deferred:
        """See L{IConferenceDirectory.locate}."""
        return self._call(self._locate(conferenceID))

    async def _locate(self, cid: str, attempts: int = 3):
        record, host = await self._redis.mget([self._conf(cid), self._host(cid)])
        if record is None:
            raise ProtocolError(404)
        stored = json.loads(record)
        if host == self.nodeID:
            self._records[cid] = stored
            return None, settingsFrom(stored)
        nodes = await self._liveNodes()
        if host is not None and host in nodes:
            self.counters["redirects"] += 1
            return nodes[host]["url"], None
        # Its node died (or never took it): place it again, atomically.
        target = self._leastLoaded(nodes)
        taken = await self._redis.eval(_TAKE_OVER, 1, self._host(cid), host or "",
                                       target, self._ttl())
        if not taken:
            if attempts <= 1:
                raise ProtocolError(503, detail="the conference is being placed")
            return await self._locate(cid, attempts - 1)  # another node placed it meanwhile
        self.counters["placed"] += 1
        _log.info("conference {conference_id} placed again, on node {node}{was}",
                  conference_id=cid, node=target, was=f" (node {host} is gone)" if host else "")
        if target == self.nodeID:
            self._records[cid] = stored
            return None, settingsFrom(stored)
        self.counters["redirects"] += 1
        return nodes[target]["url"], None

    def hosted(self, settings: ConferenceSettings) -> None:
        """See L{IConferenceDirectory.hosted}."""
        self._records.setdefault(settings.conferenceID, storedSettings(settings))

    def removed(self, conferenceID: str, permanent: bool) -> None:
        """See L{IConferenceDirectory.removed}."""
        self._records.pop(conferenceID, None)
        self._call(self._removed(conferenceID, permanent), quiet=True)

    async def _removed(self, cid: str, permanent: bool):
        pipe = self._redis.pipeline(transaction=False)
        pipe.eval(_DELETE_IF, 1, self._host(cid), self.nodeID)
        if not permanent:
            pipe.delete(self._conf(cid))
        await pipe.execute()


def _safeURL(url: str) -> str:
    """The Redis URL without a password (for logs)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url


def clusterFromConfig(table: dict) -> ClusterSettings:
    """A L{ClusterSettings} from the checked C{[cluster]} table."""
    return replace(ClusterSettings(table["redis"], table["node_url"], table["node_id"]),
                   **{k: float(table[k]) for k in ("ttl", "record_ttl") if k in table})
