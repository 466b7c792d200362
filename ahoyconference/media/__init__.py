# -*- test-case-name: tests.test_media_engine -*-
"""
The media engine: publishing, subscribing and RTP forwarding with aiortc
(L{ahoyconference.media.engine.AiortcMediaEngine}).

Modules, one job each (docs/architecture.md, "The media engine"): C{engine}
(the publish/subscribe lifecycle), C{peers} (peer connections), C{streams}
(publishers' streams, what the listener hears), C{forward} (the per-packet
path), C{outstream} (one subscriber's copy), C{rtcp} (RTCP policy),
C{hooks} (every private aiortc/aioice/pylibsrtp/asyncio access), C{sdp}
(SDP edits and answer checks), C{ice} (the C{[ice]} settings), C{speaking}
(speaker detection).
"""
