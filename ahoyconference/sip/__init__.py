"""
SIP dial-in: telephones and PBXs join conferences as members without WebRTC
(docs/sip.md).  One module per job: L{message} (parse, serialise),
L{transport} (UDP and TCP), L{transaction} (RFC 3261 17: retransmissions,
timers), L{dialog} (RFC 3261 12), L{sdp} (offer/answer for plain RTP),
L{g711} (the codec), L{rtp} (a call's media socket, RFC 4733 digits, tones),
L{mixer} (the room's audio for one phone), L{call} (one call: PIN, member)
and L{gateway} (INVITE to conference).
"""
