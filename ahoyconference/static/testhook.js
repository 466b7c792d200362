/*
 * The test hook: window.ahoy, for tests/test_browser.py (headless Chromium)
 * to read the state, drive the client and read getStats().
 *
 * main.js loads this module only with ?loopbackOnly=1 or ?testhook=1, the tests' flags, so
 * a production page never runs it.  Were it loaded anyway it would be
 * harmless: it exposes to the page's own scripts what they can already
 * reach (the page's state and peer connections), and nothing to the server
 * or to other pages.
 */
import {join, leave, sendChat} from "./conference.js";
import {setSharing, stripCandidates} from "./media.js";
import {onMessage, request} from "./protocol.js";
import {LOOPBACK_ONLY, LOW_RES, rt, state} from "./state.js";
import {tileFor} from "./tiles.js";
import {create} from "./ui.js";

// ------------------------------------------------------------ test hook

// Per remote member: what their video element shows and what the
// subscription's getStats() says (frames decoded, audio received).
export function mediaStats() {
  var ids = Object.keys(state.members);
  return Promise.all(ids.map(function (id) {
    var m = state.members[id];
    var tile = tileFor(id);
    var video = tile ? tile.querySelector("video") : null;
    var audio = tile ? tile.querySelector("audio") : null;
    var out = {
      memberID: id, name: m.name,
      videoWidth: video ? video.videoWidth : 0, videoHeight: video ? video.videoHeight : 0,
      paused: video ? video.paused : true,
      audioPaused: audio ? audio.paused : true,
      framesDecoded: 0, audioBytes: 0, audioSamples: 0, audioLevel: 0,
      // video receive quality (loss tests): freezes, loss left after repair, feedback sent
      freezeCount: 0, totalFreezesDuration: 0, packetsLost: 0, nackCount: 0, pliCount: 0,
      // the size of the frames decoded last (simulcast: which layer arrives)
      frameWidth: 0, frameHeight: 0, framesPerSecond: 0, videoBytes: 0,
      connectionState: m.sub.pc ? m.sub.pc.connectionState : "none",
      serial: m.sub.serial || 0,    // which subscription (a new one per SDP_request)
      kinds: [],                    // what the current subscription receives
    };
    if (!m.sub.pc) return out;
    m.sub.pc.getTransceivers().forEach(function (t) {
      if (t.currentDirection === "recvonly" || t.currentDirection === "sendrecv") {
        out.kinds.push(t.receiver.track.kind);
      }
    });
    return m.sub.pc.getStats().then(function (report) {
      report.forEach(function (s) {
        if (s.type !== "inbound-rtp") return;
        if (s.kind === "video") {
          out.framesDecoded += s.framesDecoded || 0;
          out.freezeCount += s.freezeCount || 0;
          out.totalFreezesDuration += s.totalFreezesDuration || 0;
          out.packetsLost += s.packetsLost || 0;
          out.nackCount += s.nackCount || 0;
          out.pliCount += s.pliCount || 0;
          out.frameWidth = Math.max(out.frameWidth, s.frameWidth || 0);
          out.frameHeight = Math.max(out.frameHeight, s.frameHeight || 0);
          out.framesPerSecond += s.framesPerSecond || 0;
          out.videoBytes += s.bytesReceived || 0;
        }
        if (s.kind === "audio") {
          out.audioBytes += s.bytesReceived || 0;
          out.audioSamples += s.totalSamplesReceived || 0;
          out.audioLevel = Math.max(out.audioLevel, s.audioLevel || 0);
        }
      });
      return out;
    });
  }));
}

export function publishStats() {
  if (!rt.publisher.pc) return Promise.resolve({connectionState: "none", framesEncoded: 0, audioBytes: 0, videoBytes: 0, layers: {}});
  var out = {connectionState: rt.publisher.pc.connectionState, framesEncoded: 0, audioBytes: 0,
             videoBytes: 0, frameWidth: 0, timestamp: 0,
             layers: {}};   // simulcast: rid -> {frameWidth, framesEncoded, bytesSent}
  return rt.publisher.pc.getStats().then(function (report) {
    report.forEach(function (s) {
      if (s.type !== "outbound-rtp") return;
      if (s.kind === "video") {
        out.framesEncoded += s.framesEncoded || 0;
        out.videoBytes += s.bytesSent || 0;
        out.frameWidth = Math.max(out.frameWidth, s.frameWidth || 0);
        out.nackCount = (out.nackCount || 0) + (s.nackCount || 0);
        out.retransmittedPacketsSent = (out.retransmittedPacketsSent || 0) +
          (s.retransmittedPacketsSent || 0);
        out.timestamp = s.timestamp;
        out.layers[s.rid || ""] = {frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0,
                                   framesEncoded: s.framesEncoded || 0, bytesSent: s.bytesSent || 0,
                                   framesPerSecond: s.framesPerSecond || 0,
                                   limitation: s.qualityLimitationReason || ""};
      }
      if (s.kind === "audio") out.audioBytes += s.bytesSent || 0;
    });
    return out;
  });
}

// The addresses of the candidate pair each peer connection uses (tests
// check that media stays on 127.0.0.1).
export function selectedPairs() {
  var pcs = [];
  if (rt.publisher.pc) pcs.push(["publish", rt.publisher.pc]);
  Object.keys(state.members).forEach(function (id) {
    var m = state.members[id];
    if (m.sub.pc) pcs.push(["subscribe " + m.name, m.sub.pc]);
  });
  return Promise.all(pcs.map(function (entry) {
    return entry[1].getStats().then(function (report) {
      var pair = null, out = {pc: entry[0], local: null, remote: null};
      report.forEach(function (s) {
        if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
      });
      if (pair) {
        var l = report.get(pair.localCandidateId), r = report.get(pair.remoteCandidateId);
        out.local = l ? (l.address || l.ip) : null;
        out.remote = r ? (r.address || r.ip) : null;
        out.localType = l ? l.candidateType : null;                // "relay": through TURN
        out.relayProtocol = l ? (l.relayProtocol || null) : null;  // to the TURN server
      }
      return out;
    });
  }));
}

export function install() {
  window.ahoy = {
    state: state,
    flags: {loopbackOnly: LOOPBACK_ONLY, lowres: LOW_RES},
    join: join,
    create: create,
    leave: leave,
    setSharing: setSharing,
    sendChat: sendChat,
    request: request,
    mediaStats: mediaStats,
    publishStats: publishStats,
    selectedPairs: selectedPairs,
    stripCandidates: stripCandidates,
    // Tests: handle a message as if the server had sent it.
    receive: function (message) { onMessage({data: JSON.stringify(message)}); },
    // Tests: close the socket as if the network dropped.
    dropConnection: function () { if (rt.ws) rt.ws.close(4000, "test"); },
  };
}
