# -*- test-case-name: tests.test_media_engine -*-
"""
L{MediaStreams}: every publisher's L{InStream}s and speaking detector, and
what the engine's L{IMediaListener} hears of them
(docs/architecture.md, "The media engine").

A publisher's streams outlive its peer connections (a renegotiation keeps
them, so subscriptions continue); they go when the member leaves, and their
counters are kept for /metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ahoyconference.interfaces import IMediaListener
from ahoyconference.logs import logger
from ahoyconference.media.faults import Faults
from ahoyconference.media.forward import InStream
from ahoyconference.media.peers import KINDS, short
from ahoyconference.media.repair import LossRepair
from ahoyconference.media.simulcast import LayerStream, SimulcastVideo
from ahoyconference.media.speaking import SpeakingDetector

_log = logger(__name__)


class MediaStreams:
    """
    The publishers' streams and speaking detectors.

    @ivar streams: C{(memberID, kind)} → L{InStream}.
    """

    def __init__(self, listener: IMediaListener, now: Callable[[], float],
                 onKeyframeNeeded: Callable[[InStream], None],
                 onSource: Callable[[InStream], None],
                 onStale: Callable[[InStream, int], None], faults: Faults,
                 makeRepair: Callable[[InStream], LossRepair | None] = lambda s: None):
        self._listener = listener
        self._now = now
        self._onKeyframeNeeded = onKeyframeNeeded
        self._onSource = onSource
        self._onStale = onStale
        self._faults = faults
        self._makeRepair = makeRepair
        self.streams: dict[tuple[str, str], InStream] = {}
        self._detectors: dict[str, SpeakingDetector] = {}
        self._leaving: set[str] = set()
        self._retired = Counter()
        self._retiredDrops = Counter()

    def get(self, memberID: str, kind: str) -> InStream | None:
        """The member's stream of C{kind}, if it has one."""
        return self.streams.get((memberID, kind))

    def streamFor(self, memberID: str, kind: str) -> InStream:
        """The member's stream of C{kind}, made on first use."""
        stream = self.streams.get((memberID, kind))
        if stream is None:
            onLevel = self._detectorFor(memberID).level if kind == "audio" else None
            stream = InStream(memberID, kind, self._now, onAvailable=self._available,
                              onKeyframeNeeded=self._onKeyframeNeeded, onLevel=onLevel,
                              onSource=self._onSource, onStale=self._onStale,
                              faults=self._faults)
            if kind == "video":
                stream.repair = self._makeRepair(stream)
            self.streams[(memberID, kind)] = stream
        return stream

    def simulcast(self, memberID: str, rids: list[str], ridId: int, rridId: int,
                  onDropped: Callable[[str], None], counters: Counter,
                  absId: int = 0) -> SimulcastVideo:
        """
        Layers for the member's video (a publisher connection that sends
        simulcast), each an L{InStream} of its own with its own loss repair,
        told to the member's video stream (L{InStream.useLayers}).

        @param absId: the connection's C{abs-send-time} extension id (0: none).
        """
        main = self.streamFor(memberID, "video")

        def available(layer, up):
            if up and not main.available:
                main.available = True
                self._available(main, True)

        def makeLayer(owner, index, rid):
            layer = LayerStream(owner, index, rid, memberID, "video", self._now,
                                onAvailable=available, onKeyframeNeeded=self._onKeyframeNeeded,
                                onSource=self._onSource, onStale=self._onStale,
                                faults=self._faults)
            layer.repair = self._makeRepair(layer)
            return layer

        video = SimulcastVideo(main, rids, ridId, rridId, makeLayer, self._now,
                               self._onKeyframeNeeded, onDropped, counters, absId)
        return video

    def _detectorFor(self, memberID: str) -> SpeakingDetector:
        """The member's speaking detector, made on first use."""
        detector = self._detectors.get(memberID)
        if detector is None:
            def changed(speaking):
                _log.debug("member {member_id} speaking: {speaking}",
                           member_id=short(memberID), speaking=speaking)
                if memberID in self._leaving:
                    return
                try:
                    self._listener.speakingChanged(memberID, speaking)
                except Exception:
                    _log.failure("the media listener's speakingChanged raised")

            detector = self._detectors[memberID] = SpeakingDetector(changed)
        return detector

    def _available(self, stream: InStream, available: bool) -> None:
        _log.debug("media {kind} {state} from member {member_id}", kind=stream.kind,
                   state="up" if available else "down", member_id=short(stream.publisherID))
        if stream.publisherID in self._leaving:
            return
        try:
            self._listener.mediaAvailable(stream.publisherID, stream.kind, available)
        except Exception:
            _log.failure("the media listener's mediaAvailable raised")

    def sourceGone(self, memberID: str, kinds) -> None:
        """A publisher connection's media stopped: tell, and reset the streams."""
        for kind in kinds:
            stream = self.streams.get((memberID, kind))
            if stream is None:
                continue
            stream.sourceGone()
            if stream.repair is not None:
                stream.repair.reset()
            if stream.available:
                stream.available = False
                self._available(stream, False)
            if kind == "audio":
                detector = self._detectors.get(memberID)
                if detector is not None:
                    detector.reset()

    def quiet(self, memberID: str) -> None:
        """Tell the listener nothing more about this member (it is leaving)."""
        self._leaving.add(memberID)

    def remove(self, memberID: str) -> None:
        """The member left: its streams and detector go (their counters stay)."""
        for kind in KINDS:
            stream = self.streams.pop((memberID, kind), None)
            if stream is not None:
                self._retire(stream)
        detector = self._detectors.pop(memberID, None)
        if detector is not None:
            detector.reset()
        self._leaving.discard(memberID)

    def _retire(self, stream: InStream) -> None:
        if stream.layers is not None:
            stream.useLayers(None)  # folds the layers' counters into the stream's
        if stream.repair is not None:
            stream.repair.reset()
        self._retired["forwarded_packets"] += stream.sentPackets
        self._retired["forwarded_bytes"] += stream.sentOctets
        self._retired["dropped_packets"] += stream.dropped
        self._retiredDrops.update(stream.drops)
        self._retired["send_errors"] += stream.sendErrors

    def idle(self, now: float) -> None:
        """Speaking timeouts: publishers whose audio stopped stop speaking."""
        for detector in list(self._detectors.values()):
            detector.idle(now)
        for stream in list(self.streams.values()):
            if stream.layers is not None:
                stream.layers.tick()

    def totals(self) -> Counter:
        """
        C{forwarded_packets}, C{forwarded_bytes}, C{dropped_packets},
        C{send_errors}, and C{drops} (a L{Counter} by reason).
        """
        totals = Counter(self._retired)
        drops = Counter(self._retiredDrops)
        streams = [s for main in self.streams.values()
                   for s in (main, *(main.layers.layers if main.layers is not None else ()))]
        for stream in streams:
            drops.update(stream.drops)
            totals["forwarded_packets"] += stream.sentPackets
            totals["forwarded_bytes"] += stream.sentOctets
            totals["dropped_packets"] += stream.dropped
            totals["send_errors"] += stream.sendErrors
        totals["drops"] = drops
        return totals

    def clear(self) -> None:
        """Forget every stream and detector (the engine closes)."""
        for stream in self.streams.values():
            self._retire(stream)
        self.streams.clear()
        for detector in self._detectors.values():
            detector.reset()
        self._detectors.clear()
