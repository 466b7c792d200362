# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's L{Options} and L{makeService}: C{twistd ahoyconference}.

No module of ours imports the reactor at import time: L{makeService}
installs the asyncio reactor (aiortc needs it) unless one is installed
already, in which case it must be the asyncio one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.python import usage

from ahoyconference import __version__
from ahoyconference.config import Config, ConfigError, loadConfig
from ahoyconference.logs import logger, setLevel

DEFAULT_PORT = "tcp:8080:interface=127.0.0.1"

_log = logger(__name__)


class Options(usage.Options):
    """
    C{twistd ahoyconference [--port=DESC ...] [--config=PATH] [--policy=NAME]}.
    """

    synopsis = "[options]"
    longdesc = (
        "A WebRTC conference server: browsers join rooms over a JSON WebSocket API "
        "and the server forwards their audio and video."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file."],
        ["policy", None, None, "The policy plugin's name (overrides [policy] name)."],
        ["node-id", None, None, "This node's ID in a cluster (overrides [cluster] node_id)."],
        ["node-url", None, None,
         "This node's public ws(s):// URL in a cluster (overrides [cluster] node_url)."],
        ["udp-port", None, None,
         "The one UDP port for media (overrides [ice] udp_port; 0: a socket per "
         "peer connection)."],
    ]
    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.toml")})

    def __init__(self):
        super().__init__()
        self["ports"] = []

    def opt_port(self, description):
        """
        An endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable; default
        tcp:8080:interface=127.0.0.1).
        """
        self["ports"].append(description)

    opt_p = opt_port

    def opt_version(self):
        """Print the version and exit."""
        print(f"ahoyconference {__version__}")
        sys.exit(0)

    def postOptions(self):
        """
        Read the configuration file now, so that mistakes stop start-up early.

        @raise SystemExit: the file is unusable (one line naming file and key).
        """
        try:
            config = loadConfig(self["config"]) if self["config"] else Config()
        except ConfigError as e:
            # One line naming the file and the key, not twistd's usage text.
            raise SystemExit(f"ahoyconference: {e}")
        changes = {}
        if self["ports"]:
            changes["ports"] = tuple(self["ports"])
        elif not config.ports:
            changes["ports"] = (DEFAULT_PORT,)
        if self["policy"]:
            changes["policy_name"] = self["policy"]
        if self["udp-port"] is not None:
            try:
                udpPort = int(self["udp-port"])
            except ValueError:
                udpPort = -1
            if not 0 <= udpPort <= 65535:
                raise SystemExit("ahoyconference: --udp-port must be a UDP port (1-65535) "
                                 "or 0")
            changes["ice"] = dataclasses.replace(config.ice, udp_port=udpPort)
        if self["node-id"] or self["node-url"]:
            if config.cluster is None:
                raise SystemExit("ahoyconference: --node-id and --node-url need a [cluster] "
                                 "table with redis in the --config file")
            cluster = dict(config.cluster)
            for option, key in (("node-id", "node_id"), ("node-url", "node_url")):
                if self[option]:
                    cluster[key] = self[option]
            if not cluster["node_url"].startswith(("ws://", "wss://")):
                raise SystemExit("ahoyconference: --node-url must be a ws:// or wss:// URL")
            changes["cluster"] = cluster
        self["configuration"] = config.replace(**changes)


def installAsyncioReactor():
    """
    Install the asyncio reactor if no reactor is installed yet, and return
    the reactor.

    @raise SystemExit: another reactor is installed already.
    """
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise SystemExit(
            "ahoyconference needs the asyncio reactor (aiortc runs on asyncio): "
            "run twistd --reactor=asyncio ahoyconference ..."
        )
    return reactor


class _ReloadOnHangup(MultiService):
    """
    The top service: re-reads the configuration on SIGHUP (C{systemctl
    reload}) and makes an orderly SIGTERM (or SIGINT) exit with status 0.

    Its signal handlers do nothing but wake the reactor
    (C{callFromThread}); the rest runs in the reactor.  The reactor's own
    SIGTERM and SIGINT handlers log from inside the handler: a signal that
    arrives while a log line is being written to twistd's C{-l} file then
    waits forever for the file's lock, which the interrupted write holds
    (found by C{tests.test_tap}: twistd did not stop on SIGTERM, its
    stacks ended in C{LogFile.write} twice).  So they are replaced, once
    the reactor has installed them.  Ours stop the reactor without setting
    its exit signal, so twistd exits 0 rather than dying of the signal
    again (C{tests.test_tap.ShutdownTests}).
    """

    def __init__(self, service, path, reactor):
        super().__init__()
        self.conferenceService = service
        self.path = path
        self.reactor = reactor
        self._previous = None
        self._replaced: dict = {}

    def startService(self):
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        self.reactor.callWhenRunning(self._replaceStopHandlers)

    def _replaceStopHandlers(self):
        """Put ours in place of the reactor's SIGTERM and SIGINT handlers (only those)."""
        for signum, theirs in ((signal.SIGTERM, getattr(self.reactor, "sigTerm", None)),
                               (signal.SIGINT, getattr(self.reactor, "sigInt", None))):
            if theirs is not None and signal.getsignal(signum) == theirs:
                self._replaced[signum] = signal.signal(signum, self._stopSignal)

    def _stopSignal(self, signum, frame):
        # In the signal handler: nothing that takes a lock (no logging).
        self.reactor.callFromThread(self._stopOnSignal, signum)

    def _stopOnSignal(self, signum):
        """In the reactor: log the signal and stop (once)."""
        from twisted.internet.error import ReactorNotRunning

        _log.info("Received {name}, shutting down.", name=signal.Signals(signum).name)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while stopping

    def stopService(self):
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        for signum, theirs in self._replaced.items():
            signal.signal(signum, theirs)
        self._replaced.clear()
        return super().stopService()

    def reload(self):
        """Re-read the file; a broken file is logged and the old config kept."""
        if not self.path:
            _log.info("SIGHUP: no --config file to re-read; nothing changes")
            return
        try:
            config = loadConfig(self.path)
        except ConfigError as e:
            _log.error("reload failed, keeping the running configuration: {error}", error=str(e))
            return
        current = self.conferenceService.config
        from ahoyconference.policy import checkOrigins

        try:
            checkOrigins(self.conferenceService.policy, config.allowed_origins)
        except ValueError as e:
            _log.error("reload failed, keeping the running configuration: {error}", error=str(e))
            return
        setLevel(config.log_level)
        self.conferenceService.reload(config.replace(ports=current.ports,
                                                     policy_name=current.policy_name))
        site = getattr(self, "site", None)
        if site is not None:
            site.conferenceFactory.applyLimits(config.limits)


def makeService(options) -> MultiService:
    """Build the service tree: the conference service and one listener per port."""
    reactor = installAsyncioReactor()
    return buildService(options["configuration"], reactor)


def buildService(config: Config, reactor) -> MultiService:
    """
    The service tree for a configuration (used by L{makeService} and tests).

    @raise SystemExit: the policy cannot be loaded.
    """
    from ahoyconference.media.engine import AiortcMediaEngine, installAsyncioExceptionHandler
    from ahoyconference.media.hooks import HookMismatch
    from ahoyconference.media.udpmux import PortUnavailable
    from ahoyconference.policy import UnknownPolicy, checkOrigins, loadPolicy
    from ahoyconference.service import ConferenceService
    from ahoyconference.web import makeSite

    setLevel(config.log_level)
    try:
        policy = loadPolicy(config.policy_name, config.policy_options, reactor)
        checkOrigins(policy, config.allowed_origins)
    except (UnknownPolicy, ValueError) as e:
        raise SystemExit(f"ahoyconference: {e}")
    installAsyncioExceptionHandler(asyncio.get_event_loop())
    directory = None
    if config.cluster is not None:
        from ahoyconference.cluster import RedisDirectory, clusterFromConfig

        # The heartbeat reads the service's load, which exists only below.
        directory = RedisDirectory(clusterFromConfig(config.cluster), reactor,
                                   load=lambda: service.loadReport(), rooms=config.rooms)

    def makeEngine(listener):
        return AiortcMediaEngine(listener, config.ice, reactor,
                                 iceTimeout=config.limits.ice_timeout,
                                 simulcast=config.simulcast)

    try:
        service = ConferenceService(config, reactor, policy, makeEngine, directory)
    except HookMismatch as e:
        raise SystemExit(f"ahoyconference: the installed aiortc/aioice/pylibsrtp do not fit "
                         f"the media engine: {e}")
    except PortUnavailable as e:
        raise SystemExit(f"ahoyconference: {e}")
    top = _ReloadOnHangup(service, config.path, reactor)
    if directory is not None:
        directory.setServiceParent(top)
        _log.info("cluster node {node_id} ({url}), directory {redis}",
                  node_id=directory.nodeID, url=config.cluster["node_url"],
                  redis=directory.safeURL)
    service.setServiceParent(top)
    if config.sip is not None:
        from ahoyconference.sip.gateway import SipGateway

        service.sip = SipGateway(service, config.sip, reactor)
        service.sip.setServiceParent(top)
    site = makeSite(service)
    for description in config.ports:
        strports.service(description, site).setServiceParent(top)
    top.site = site
    return top
