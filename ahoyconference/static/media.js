/*
 * Media: one RTCPeerConnection to publish (answering the server's
 * MEDIA_RECEIVE_request offer) and one per subscribed member (answering its
 * SDP_request offer).  No trickle ICE: every answer is sent once ICE
 * gathering is complete, its candidates inside the SDP.  Every peer
 * connection uses the iceServers of the CONFERENCE_JOIN_response (none when
 * it has none).
 */
import {addMember} from "./conference.js";
import {describeError, request, sendRaw} from "./protocol.js";
import {CAMERA, GATHER_TIMEOUT_MS, LAYERS, LOOPBACK_ONLY, LOW_RES, MAX_MEDIA_RETRIES, MEDIA_RETRY_DELAY_MS, QUALITY, SMALL_TILES_FROM, SUBSCRIBE_DEBOUNCE_MS, logEvent, rt, state} from "./state.js";
import {attachRemoteStream, renderLocalPreview, renderTile, tileFor} from "./tiles.js";
import {renderControls, showNotice} from "./ui.js";

let subscribeTimers = {};      // memberID -> pending updateSubscription timer

// Every peer connection uses the ICE servers (STUN/TURN) the server named
// in the join response; none when it named none.
export function rtcConfiguration() {
  return {iceServers: state.iceServers || []};
}

export function stripCandidates(sdp) {
  if (!LOOPBACK_ONLY) return sdp;
  var lines = sdp.split("\r\n");
  var out = [];
  for (var i = 0; i < lines.length; i++) {
    var line = lines[i];
    if (line.indexOf("a=candidate:") === 0) {
      // a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
      var parts = line.split(" ");
      if (parts[4] !== "127.0.0.1") continue;
    } else if (line.indexOf("c=IN IP4 ") === 0 || line.indexOf("c=IN IP6 ") === 0) {
      line = "c=IN IP4 127.0.0.1";
    }
    out.push(line);
  }
  return out.join("\r\n");
}

export function waitForGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise(function (resolve) {
    var timer = setTimeout(function () {
      logEvent("ICE gathering did not complete in time; answering with what we have");
      done();
    }, GATHER_TIMEOUT_MS);
    function check() { if (pc.iceGatheringState === "complete") done(); }
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Apply an offer, let `prepare` set up transceivers, answer once ICE
// gathering is complete.  Resolves with the answer SDP to send.
export function answerOffer(pc, offerSdp, prepare) {
  return pc.setRemoteDescription({type: "offer", sdp: offerSdp})
    .then(function () { return prepare ? prepare(pc) : null; })
    .then(function () { return pc.createAnswer(); })
    .then(function (answer) { return pc.setLocalDescription(answer); })
    .then(function () { return waitForGathering(pc); })
    .then(function () { return stripCandidates(pc.localDescription.sdp); });
}

export function respond(type, tid, sdp) {
  state.answers.push({type: type, transactionID: tid, sdp: sdp});
  if (state.answers.length > 20) state.answers.shift();
  try {
    sendRaw({messageType: type, status: 200, reason: "OK", sdp: sdp, transactionID: tid});
  } catch (e) {
    logEvent("cannot send " + type + ": " + e.message);
  }
}

export function respondError(type, tid, status, reason) {
  try {
    sendRaw({messageType: type, status: status, reason: reason, transactionID: tid});
  } catch (e) { /* gone */ }
}

// The server offers to receive our media (protocol.md 3.1).  Each request
// gets a fresh peer connection; a newer request supersedes one still being
// answered (the server no longer waits for that answer), so it is dropped.
export function onMediaReceiveRequest(msg) {
  var tid = msg.transactionID;
  if (rt.publisher.pc) rt.publisher.pc.close();
  var pc = new RTCPeerConnection(rtcConfiguration());
  rt.publisher.pc = pc;
  watchPc(pc, "publish", function () {
    // The media path broke (network change, server restart of the media
    // engine): share again, which makes the server send a new offer.
    if (rt.publisher.pc !== pc || state.screen !== "room") return;
    rt.publisher.failures = (rt.publisher.failures || 0) + 1;
    if (rt.publisher.failures > MAX_MEDIA_RETRIES) {
      showNotice("Your camera and microphone could not reach the server. Try sharing again.", "error");
      return;
    }
    showNotice("The connection for your camera and microphone broke; reconnecting it\u2026", "warn", 5000);
    request("MEDIA_SHARE_request", {audio: state.sharing.audio, video: state.sharing.video})
      .catch(function (e) { logEvent("re-share failed: " + e.message); });
  }, function () { rt.publisher.failures = 0; });
  answerOffer(pc, msg.sdp, attachLocalTracks).then(function (sdp) {
    if (rt.publisher.pc !== pc) return;
    respond("MEDIA_RECEIVE_response", tid, sdp);
    logEvent("answered MEDIA_RECEIVE_request");
  }).catch(function (e) {
    if (rt.publisher.pc !== pc) return;
    logEvent("MEDIA_RECEIVE_request failed: " + e);
    respondError("MEDIA_RECEIVE_response", tid, 488, "not acceptable here");
    showNotice("Could not send your media: " + e.message, "error", 8000);
  });
}

export function attachLocalTracks(pc) {
  var jobs = [];
  var used = {};
  pc.getTransceivers().forEach(function (tr) {
    var kind = tr.receiver && tr.receiver.track ? tr.receiver.track.kind : null;
    var track = null;
    if (rt.localStream && kind && !used[kind] && state.sharing[kind]) {
      track = (kind === "audio" ? rt.localStream.getAudioTracks() : rt.localStream.getVideoTracks())[0] || null;
    }
    if (track) {
      used[kind] = true;
      tr.direction = "sendonly";
      jobs.push(tr.sender.replaceTrack(track));
      if (tr.sender.setStreams) tr.sender.setStreams(rt.localStream);
      if (kind === "video") jobs.push(configureLayers(tr.sender, track));
    } else {
      tr.direction = "inactive";
    }
  });
  return Promise.all(jobs);
}

// When the server's offer asked for simulcast (docs/architecture.md), the
// browser made one encoding per rid, lowest first: give each its size and
// bitrate (LAYERS).  Without simulcast there is one encoding: left alone.
// A small camera picture gets fewer layers (Chromium itself sends only the
// lowest one or two below 960 and 480 pixels wide): the lowest active
// encoding is the smallest layer that is still useful, the highest is the
// full picture.
export function configureLayers(sender, track) {
  var params = sender.getParameters();
  var encodings = params.encodings || [];
  if (encodings.length < 2) return Promise.resolve();
  var width = track && track.getSettings ? (track.getSettings().width || 0) : 0;
  var count = width >= 960 ? 3 : (width >= 480 ? 2 : 1);
  count = Math.min(count, encodings.length, LAYERS.length);
  encodings.forEach(function (enc, i) {
    if (i >= count) {
      enc.active = false;
      return;
    }
    var layer = LAYERS[LAYERS.length - count + i];
    enc.scaleResolutionDownBy = layer.scaleResolutionDownBy;
    if (layer.maxBitrate && i < count - 1) enc.maxBitrate = layer.maxBitrate;
    else delete enc.maxBitrate;
    enc.active = true;
  });
  state.simulcastLayers = encodings.map(function (e) { return e.rid; });
  return sender.setParameters(params).catch(function (e) {
    logEvent("simulcast layers not configured: " + e.message);
  });
}

// The quality to ask for a member's video in (protocol.md 4.11): "high" for
// the speaker (the member who last started speaking: the big picture), "low"
// for the others when tiles are small (many members with video), else
// "high"; ?quality= forces one.
export function qualityFor(member) {
  if (QUALITY) return QUALITY;
  if (state.speakerID && member.memberID === state.speakerID) return "high";
  var videos = Object.keys(state.members).filter(function (id) {
    var m = state.members[id];
    return m.video && m.video.available;
  }).length;
  return videos >= SMALL_TILES_FROM ? "low" : "high";
}

export function liveTracks(kind) {
  if (!rt.localStream) return [];
  var tracks = kind === "audio" ? rt.localStream.getAudioTracks() : rt.localStream.getVideoTracks();
  return tracks.filter(function (t) { return t.readyState === "live"; });
}

// Open the camera and/or microphone if they are wanted and not open yet.
export function acquireMedia(audio, video) {
  if (!rt.localStream) rt.localStream = new MediaStream();
  var need = {audio: audio && !liveTracks("audio").length, video: video && !liveTracks("video").length};
  if (!need.audio && !need.video) return Promise.resolve(rt.localStream);
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return Promise.reject(new Error("this page has no access to camera or microphone (it needs https or localhost)"));
  }
  var constraints = {
    audio: need.audio ? {echoCancellation: true, noiseSuppression: true} : false,
    video: need.video ? (LOW_RES ? {width: 320, height: 180, frameRate: 15}
                                 : {width: {ideal: +CAMERA[1]}, height: {ideal: +CAMERA[2]}, frameRate: {ideal: 30}}) : false,
  };
  return navigator.mediaDevices.getUserMedia(constraints).then(function (s) {
    s.getTracks().forEach(function (t) {
      if (t.kind === "audio") t.enabled = !state.selfMuted;
      rt.localStream.addTrack(t);
    });
    return rt.localStream;
  });
}

// Close what is not shared (the camera light goes off).
export function releaseMedia(keep) {
  if (!rt.localStream) return;
  rt.localStream.getTracks().forEach(function (t) {
    if (!keep[t.kind]) {
      t.stop();
      rt.localStream.removeTrack(t);
    }
  });
}

// Share (or stop sharing) microphone and camera: MEDIA_SHARE_request.  What
// is shared changes with the 200 response, which comes before the server's
// MEDIA_RECEIVE_request (whose answer attaches the shared tracks).
// maxVideoBitrate (kbit/s, optional): the cap to ask for (the server's
// default is 500; simulcast's top layer needs more for its full size).
export function setSharing(audio, video, maxVideoBitrate) {
  if (!state.me || !state.me.speaker) return Promise.reject(new Error("listeners cannot share media"));
  return acquireMedia(audio, video).then(function () {
    // simulcast: we answer the offer's rids on the transceiver it makes
    // (replaceTrack, configureLayers), so we may ask for it (protocol.md 4.11)
    var params = {audio: audio, video: video, simulcast: !!video};
    if (maxVideoBitrate) params.maxVideoBitrate = maxVideoBitrate;
    return request("MEDIA_SHARE_request", params);
  }).then(function (resp) {
    state.sharing = {audio: audio, video: video};
    if (!audio) state.selfMuted = false;
    releaseMedia(state.sharing);
    if (!audio && !video && rt.publisher.pc) {
      rt.publisher.pc.close();
      rt.publisher.pc = null;
    }
    renderLocalPreview();
    renderControls();
    return resp;
  }, function (err) {
    if (!err.network) releaseMedia(state.sharing);
    state.lastError = {request: "share", status: err.status || 0, reason: err.reason || "",
                       message: describeError(err, {action: "share media"})};
    throw err;
  });
}

export function toggleShare(kind) {
  var want = {audio: state.sharing.audio, video: state.sharing.video};
  want[kind] = !want[kind];
  setSharing(want.audio, want.video).catch(function (e) {
    var text;
    if (e.status) text = describeError(e, {action: "share media"});
    else if (e.network) text = "Not connected to the server: " + e.message;
    else text = "Could not use your " + (kind === "video" ? "camera" : "microphone") + ": " + e.message;
    showNotice(text, "error", 8000);
    renderLocalPreview();
    renderControls();
  });
}

export function toggleSelfMute() {
  var muted = !state.selfMuted;
  request("MEDIA_MUTE_request", {audio: muted}).then(function () {
    state.selfMuted = muted;
    if (rt.localStream) rt.localStream.getAudioTracks().forEach(function (t) { t.enabled = !muted; });
    renderControls();
    if (state.me) renderTile(state.me);
  }, function (e) {
    showNotice(describeError(e, {action: muted ? "mute" : "unmute yourself"}), "error", 6000);
  });
}

// Ask for a member's media whenever what they offer changes (protocol.md 4.6).
// Changes within a short window (camera, then microphone) make one request:
// every request replaces the subscription with a new offer.
export function updateSubscription(member) {
  clearTimeout(subscribeTimers[member.memberID]);
  subscribeTimers[member.memberID] = setTimeout(function () {
    delete subscribeTimers[member.memberID];
    if (state.members[member.memberID] === member && state.screen === "room") subscribeNow(member);
  }, SUBSCRIBE_DEBOUNCE_MS);
}

export function subscribeNow(member) {
  var want = {audio: !!member.audio.available, video: !!member.video.available};
  var have = member.subscribed;
  if (want.audio === have.audio && want.video === have.video) return;
  member.subscribed = want;
  if (!want.audio && !want.video) {
    closeSubscription(member);
  }
  var entry = {memberID: member.memberID, audio: want.audio, video: want.video};
  if (want.video) entry.quality = member.quality = qualityFor(member);
  request("MEDIA_request", {members: [entry]})
    .catch(function (e) {
      logEvent("MEDIA_request for " + member.memberID + " failed: " + e.message);
      if (state.members[member.memberID] === member) member.subscribed = {audio: false, video: false};
    });
}

// The member's video quality changes (a new speaker, more or fewer tiles):
// the same kinds with another quality, which the server applies in place,
// without a new offer (protocol.md 4.11).
export function refreshQuality(member) {
  var have = member.subscribed;
  if (!have || !have.video || !member.sub || !member.sub.pc) return;
  var quality = qualityFor(member);
  if (quality === member.quality) return;
  member.quality = quality;
  request("MEDIA_request", {members: [{memberID: member.memberID, audio: !!have.audio,
                                       video: true, quality: quality}]})
    .catch(function (e) { logEvent("quality for " + member.memberID + " not changed: " + e.message); });
}

// The server offers a member's media (protocol.md 3.2).
export function onSdpRequest(msg) {
  var id = msg.transactionID;
  var member = state.members[id] || (msg.member ? addMember(msg.member) : null);
  if (!member) {
    respondError("SDP_response", id, 404, "not found");
    return;
  }
  var sub = member.sub;
  if (sub.pc) sub.pc.close();
  var pc = new RTCPeerConnection(rtcConfiguration());
  sub.pc = pc;
  sub.serial = (sub.serial || 0) + 1;
  var stream = new MediaStream();
  sub.stream = stream;
  watchPc(pc, "subscribe " + member.name, function () {
    // Ask for this member's media again: a new offer, a new connection.
    if (sub.pc !== pc || state.members[member.memberID] !== member) return;
    sub.failures = (sub.failures || 0) + 1;
    if (sub.failures > MAX_MEDIA_RETRIES) return;
    member.subscribed = {audio: false, video: false};
    updateSubscription(member);
  }, function () { sub.failures = 0; });
  pc.ontrack = function (ev) {
    if (sub.pc !== pc) return;
    stream.addTrack(ev.track);
    attachRemoteStream(member);
    ev.track.onunmute = function () { renderTile(member); };
  };
  answerOffer(pc, msg.sdp, null).then(function (sdp) {
    if (sub.pc !== pc) return;   // superseded by a newer offer
    respond("SDP_response", id, sdp);
    logEvent("answered SDP_request for " + member.name);
  }).catch(function (e) {
    if (sub.pc !== pc) return;
    logEvent("SDP_request for " + member.name + " failed: " + e);
    respondError("SDP_response", id, 488, "not acceptable here");
  });
}

export function closeSubscription(member) {
  if (member.sub.pc) {
    member.sub.pc.close();
    member.sub.pc = null;
  }
  member.sub.stream = null;
  var tile = tileFor(member.memberID);
  if (tile) {
    tile.querySelector("video").srcObject = null;
    tile.querySelector("audio").srcObject = null;
  }
}

export function teardownMedia(stopLocal) {
  if (rt.publisher.pc) {
    rt.publisher.pc.close();
    rt.publisher.pc = null;
  }
  Object.keys(state.members).forEach(function (id) { closeSubscription(state.members[id]); });
  if (stopLocal) {
    if (rt.localStream) rt.localStream.getTracks().forEach(function (t) { t.stop(); });
    rt.localStream = null;
    state.sharing = {audio: false, video: false};
    state.selfMuted = false;
  }
}

export function watchPc(pc, label, onFailed, onConnected) {
  pc.addEventListener("connectionstatechange", function () {
    logEvent(label + ": " + pc.connectionState);
    if (pc.connectionState === "connected" && onConnected) onConnected();
    if (pc.connectionState === "failed" && onFailed) setTimeout(onFailed, MEDIA_RETRY_DELAY_MS);
  });
}
