# -*- test-case-name: tests.test_media_engine -*-
"""
The media engine: publishing, subscribing and RTP forwarding with aiortc
(L{ahoyconference.media.engine.AiortcMediaEngine}).

Modules, one job each (docs/architecture.md, "The media engine"): C{engine}
(the publish/subscribe lifecycle), C{peers} (peer connections and the
subscription table), C{connections} (making, watching and closing them),
C{streams} (publishers' streams, what the listener hears), C{forward} (the
per-packet path), C{outstream} (one subscriber's copy), C{rtcp} (RTCP
policy), C{hooks} (every private aiortc/aioice/pylibsrtp/asyncio access),
C{faults} (failures counted, the first of each kind logged), C{sdp} (SDP
edits and answer checks), C{ice} (the C{[ice]} settings), C{speaking}
(speaker detection).
"""
