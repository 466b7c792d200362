# -*- test-case-name: tests.test_media_engine -*-
"""
The media engine: publishing, subscribing and RTP forwarding with aiortc
(L{ahoyconference.media.engine.AiortcMediaEngine}).

Modules: C{engine} (the L{ahoyconference.interfaces.IMediaEngine}),
C{forward} (the per-packet path), C{speaking} (speaker detection),
C{sdp} (SDP edits and answer checks), C{ice} (the C{[ice]} settings).
"""
