/*
 * AhoyConference browser client.
 *
 * Plain JavaScript, no build step, no external resources.  Speaks the JSON
 * WebSocket protocol of protocol.md (subprotocol "conference-protocol") with
 * the server that serves this page, on the same host and port, path "/".
 *
 * Media: one RTCPeerConnection to publish (answering the server's
 * MEDIA_RECEIVE_request offer) and one per subscribed member (answering its
 * SDP_request offer).  No trickle ICE: every answer is sent once ICE
 * gathering is complete, its candidates inside the SDP.
 *
 * URL parameters:
 *   room=ID          conference ID to prefill (and the room shown after joining)
 *   name=NAME        display name to prefill
 *   loopbackOnly=1   tests only: drop every ICE candidate that is not
 *                    127.0.0.1 from our answers (design.md 7)
 *   lowres=1         capture 320x180 at 15 fps (tests on small machines)
 *
 * Test hook: window.ahoy (see the bottom of this file).
 */
(function () {
  "use strict";

  var params = new URLSearchParams(window.location.search);
  var LOOPBACK_ONLY = params.get("loopbackOnly") === "1";
  var LOW_RES = params.get("lowres") === "1";
  var REQUEST_TIMEOUT_MS = 20000;
  var GATHER_TIMEOUT_MS = 10000;
  // The TURN servers (short-lived credentials) of the last join response
  // (docs/protocol.md 4.11), given to every peer connection.
  var iceServers = [];
  var BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
  var SUBSCRIBE_DEBOUNCE_MS = 250;
  var MEDIA_RETRY_DELAY_MS = 2000;   // after a peer connection failed, ask again
  var MAX_MEDIA_RETRIES = 3;         // consecutive failures before giving up

  // ---------------------------------------------------------------- state

  var state = {
    connection: "connecting",    // connecting | open | closed
    reconnectAttempt: 0,
    reconnectAt: null,           // ms timestamp of the next attempt
    screen: "join",              // join | room | ended
    joining: false,
    me: null,                    // {memberID, name, moderator, speaker, audio, video, speaking}
    conference: null,            // {conferenceID, conferenceName, description, locked, deadline}
    members: {},                 // memberID -> member (see addMember)
    chat: [],                    // {fromID, name, text, self, time}
    sharing: {audio: false, video: false},
    selfMuted: false,
    lastError: null,             // {request, status, reason, message}
    endReason: null,             // "kicked" | "timeout" | "left" | "gone"
    log: [],                     // recent events, for debugging and tests
    answers: [],                 // the last SDP answers sent (tests check their candidates)
  };

  var ws = null;
  var pending = new Map();       // transactionID -> {resolve, reject, timer, type}
  var tidCounter = 0;
  var reconnectTimer = null;
  var countdownTimer = null;
  var session = null;            // {conferenceID, name, password} to rejoin after a reconnect
  var localStream = null;
  var publisher = {pc: null, failures: 0};
  var noReconnect = false;       // set by a kick: the server closes the socket on purpose
  var subscribeTimers = {};      // memberID -> pending updateSubscription timer

  function $(id) { return document.getElementById(id); }

  function logEvent(text) {
    state.log.push({time: Date.now(), text: text});
    if (state.log.length > 200) state.log.shift();
    if (window.console && console.debug) console.debug("[ahoy] " + text);
  }

  function newTransactionID() {
    tidCounter += 1;
    var rand;
    if (window.crypto && crypto.getRandomValues) {
      var a = new Uint32Array(2);
      crypto.getRandomValues(a);
      rand = a[0].toString(36) + a[1].toString(36);
    } else {
      rand = Math.random().toString(36).slice(2);
    }
    return "tx-" + tidCounter + "-" + rand;
  }

  // ------------------------------------------------------------ messages

  var STATUS_TEXT = {
    400: "The server did not accept the request (bad request).",
    403: "Wrong password, or you are not allowed to do that.",
    404: "There is no such conference.",
    409: "That is not possible right now (conflict).",
    470: "The conference is locked by a moderator: nobody can join right now.",
    486: "The conference is full.",
    488: "The media could not be negotiated.",
    500: "The server ran into an internal error.",
    501: "The server does not know this request.",
    503: "The server is busy; please try again later.",
  };

  function describeError(err, context) {
    if (err && err.status) {
      var text = STATUS_TEXT[err.status] || ("Error " + err.status + ": " + err.reason);
      if (err.status === 404 && context && context.conferenceID) {
        text = "There is no conference \u201c" + context.conferenceID + "\u201d.";
      }
      if ((err.status === 486 || err.status === 409) && context && context.create) {
        text = "A conference with that ID already exists.";
      }
      if (err.status === 403 && context && context.join) {
        text = "Wrong password, or you are not allowed to join this conference.";
      }
      if (err.status === 403 && context && context.action) {
        text = "You are not allowed to " + context.action + ".";
      }
      return text + " (" + err.status + " " + err.reason + ")";
    }
    return String((err && err.message) || err);
  }

  function RequestError(response) {
    this.status = response.status;
    this.reason = response.reason;
    this.response = response;
    this.message = response.status + " " + response.reason;
  }
  RequestError.prototype = Object.create(Error.prototype);

  function sendRaw(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      throw new Error("not connected to the server");
    }
    ws.send(JSON.stringify(obj));
  }

  // Send a request; resolves with the 200 response, rejects with a
  // RequestError for any other status.
  function request(messageType, fields) {
    return new Promise(function (resolve, reject) {
      var tid = newTransactionID();
      var msg = Object.assign({}, fields || {}, {messageType: messageType, transactionID: tid});
      try {
        sendRaw(msg);
      } catch (e) {
        reject(networkError(e.message));
        return;
      }
      var timer = setTimeout(function () {
        pending.delete(tid);
        reject(networkError("no answer from the server"));
      }, REQUEST_TIMEOUT_MS);
      pending.set(tid, {resolve: resolve, reject: reject, timer: timer, type: messageType});
    });
  }

  // A request that got no response at all (not connected, connection lost,
  // no answer in time): not a refusal.
  function networkError(text) {
    var e = new Error(text);
    e.network = true;
    return e;
  }

  function failPending(reason) {
    pending.forEach(function (p) {
      clearTimeout(p.timer);
      p.reject(networkError(reason));
    });
    pending.clear();
  }

  function onMessage(event) {
    var msg;
    try {
      msg = JSON.parse(event.data);
    } catch (e) {
      logEvent("unparsable message from server");
      return;
    }
    if (!msg || typeof msg !== "object") return;
    var type = String(msg.messageType || "");

    if (typeof msg.status === "number" && pending.has(msg.transactionID)) {
      var p = pending.get(msg.transactionID);
      pending.delete(msg.transactionID);
      clearTimeout(p.timer);
      if (msg.status === 200) p.resolve(msg);
      else p.reject(new RequestError(msg));
      return;
    }
    switch (type) {
      case "MEDIA_RECEIVE_request": return onMediaReceiveRequest(msg);
      case "SDP_request": return onSdpRequest(msg);
      case "CONFERENCE_JOIN_indication": return onJoinIndication(msg);
      case "CONFERENCE_LEAVE_indication": return onLeaveIndication(msg);
      case "CONFERENCE_KICK_indication": return onKickIndication(msg);
      case "CONFERENCE_DESCRIPTION_indication": return onDescriptionIndication(msg);
      case "CONFERENCE_LOCK_indication": return onLockIndication(msg);
      case "MEDIA_indication": return onMediaIndication(msg);
      case "MEDIA_event": return onMediaEvent(msg);
      case "CHAT_MESSAGE_indication": return onChatIndication(msg);
      default:
        logEvent("unhandled message " + type + " " + (msg.status || ""));
    }
  }

  // ----------------------------------------------------------- connection

  function socketURL() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + "/";
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    state.reconnectAt = null;
    state.connection = "connecting";
    renderConnection();
    var sock;
    try {
      sock = new WebSocket(socketURL(), "conference-protocol");
    } catch (e) {
      logEvent("cannot open WebSocket: " + e);
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = function () {
      if (ws !== sock) return;
      state.connection = "open";
      var wasReconnect = state.reconnectAttempt > 0;
      state.reconnectAttempt = 0;
      logEvent("connected");
      renderConnection();
      if (session && wasReconnect) {
        rejoin();
      } else if (wasReconnect) {
        showNotice("Connected to the server again.", "ok", 4000);
      }
    };
    sock.onmessage = function (ev) { if (ws === sock) onMessage(ev); };
    sock.onclose = function (ev) {
      if (ws !== sock) return;
      ws = null;
      logEvent("socket closed (" + ev.code + ")");
      failPending("connection to the server lost");
      state.connection = "closed";
      if (noReconnect) {
        state.reconnectAt = null;
        renderConnection();
        return;
      }
      if (state.screen === "room") {
        // Keep the room on screen, drop the media: the server forgot us.
        teardownMedia(false);
        clearMembers();
      }
      scheduleReconnect();
    };
    sock.onerror = function () { /* onclose follows */ };
  }

  function scheduleReconnect() {
    var delay = BACKOFF_MS[Math.min(state.reconnectAttempt, BACKOFF_MS.length - 1)];
    delay = Math.round(delay * (0.8 + Math.random() * 0.4));
    state.reconnectAttempt += 1;
    state.reconnectAt = Date.now() + delay;
    state.connection = "closed";
    renderConnection();
    reconnectTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (ws) return;
    connect();
  }

  // ------------------------------------------------------------- join etc.

  function roleOf(m) {
    if (m.moderator) return "moderator";
    if (m.speaker) return "speaker";
    return "listener";
  }

  function join(conferenceID, name, password) {
    if (state.joining) return Promise.reject(new Error("already joining"));
    state.joining = true;
    setBusy(true);
    var fields = {conferenceID: conferenceID, name: name};
    if (password) fields.password = password;
    return request("CONFERENCE_JOIN_request", fields).then(function (resp) {
      state.joining = false;
      setBusy(false);
      session = {conferenceID: resp.conferenceID || conferenceID, name: name, password: password || ""};
      enterRoom(resp, name);
      return resp;
    }, function (err) {
      state.joining = false;
      setBusy(false);
      state.lastError = {request: "join", status: err.status || 0, reason: err.reason || "",
                         message: describeError(err, {conferenceID: conferenceID, join: true})};
      throw err;
    });
  }

  function rejoin() {
    var s = session;
    showNotice("Connected again; rejoining \u201c" + s.conferenceID + "\u201d\u2026", "warn");
    var wanted = {audio: state.sharing.audio, video: state.sharing.video};
    join(s.conferenceID, s.name, s.password).then(function () {
      showNotice("Reconnected to the conference.", "ok", 4000);
      if (wanted.audio || wanted.video) {
        setSharing(wanted.audio, wanted.video).catch(function (e) {
          showNotice("Could not share your media again: " + describeError(e), "error");
        });
      }
    }, function (err) {
      if (err.network) {
        // Lost again (or no answer): keep the session, the reconnect loop rejoins.
        if (ws) ws.close(4001, "no answer to rejoin");
        return;
      }
      session = null;
      var text = describeError(err, {conferenceID: s.conferenceID, join: true});
      teardownMedia(true);
      showEnded("Could not rejoin the conference", text, "gone");
      hideNotice();
    });
  }

  function enterRoom(resp, name) {
    noReconnect = false;
    iceServers = Array.isArray(resp.iceServers) ? resp.iceServers : [];
    state.me = {
      memberID: resp.memberID, name: name,
      moderator: !!resp.moderator, speaker: !!resp.speaker, webrtc: true,
      audio: {available: false, muted: false}, video: {available: false, muted: false},
      speaking: false, self: true,
    };
    var remaining = typeof resp.remainingSeconds === "number" ? resp.remainingSeconds : -1;
    state.conference = {
      conferenceID: resp.conferenceID,
      conferenceName: resp.conferenceName || resp.conferenceID,
      description: resp.description || "",
      locked: !!resp.locked,
      remainingSeconds: remaining,
      deadline: remaining > 0 ? Date.now() + remaining * 1000 : null,
    };
    state.screen = "room";
    state.endReason = null;
    clearMembers();
    $("tiles").textContent = "";
    addTile(state.me);
    (resp.members || []).forEach(function (m) { addMember(m); });
    var url = new URL(window.location.href);
    url.searchParams.set("room", resp.conferenceID);
    try { window.history.replaceState(null, "", url.toString()); } catch (e) { /* file: etc. */ }
    showScreen("room");
    renderRoom();
    startCountdown();
    Object.keys(state.members).forEach(function (id) { updateSubscription(state.members[id]); });
  }

  function leave() {
    var wasIn = state.screen === "room";
    session = null;
    teardownMedia(true);
    clearMembers();
    if (wasIn && ws && ws.readyState === WebSocket.OPEN) {
      request("CONFERENCE_LEAVE_request", {}).catch(function () {});
    }
    showEnded("You left the conference", "", "left");
  }

  function showEnded(title, message, reason) {
    stopCountdown();
    state.screen = "ended";
    state.endReason = reason;
    $("end-title").textContent = title;
    $("end-message").textContent = message;
    document.title = "AhoyConference";
    showScreen("ended");
  }

  function backToStart() {
    state.screen = "join";
    state.me = null;
    state.conference = null;
    state.chat = [];
    $("chat-log").textContent = "";
    $("tiles").textContent = "";
    showScreen("join");
    noReconnect = false;
    if (!ws) {
      state.reconnectAttempt = 0;
      connect();
    }
  }

  // ------------------------------------------------------------- members

  function addMember(m) {
    if (!m || !m.memberID) return null;
    if (state.me && m.memberID === state.me.memberID) return null;
    var member = state.members[m.memberID];
    if (!member) {
      member = {
        memberID: m.memberID, name: m.name || "", moderator: !!m.moderator,
        speaker: !!m.speaker, webrtc: m.webrtc !== false, ip: m.ip || null,
        audio: {available: false, muted: false}, video: {available: false, muted: false},
        speaking: false,
        subscribed: {audio: false, video: false},   // what we last asked the server for
        sub: {pc: null, stream: null, serial: 0, failures: 0},
      };
      state.members[m.memberID] = member;
      addTile(member);
    }
    mergeMedia(member, m);
    renderTile(member);
    return member;
  }

  function mergeMedia(member, m) {
    if (m.audio && typeof m.audio === "object") {
      if ("available" in m.audio) member.audio.available = !!m.audio.available;
      if ("muted" in m.audio) member.audio.muted = !!m.audio.muted;
      if ("speaking" in m.audio) member.speaking = !!m.audio.speaking;
    }
    if (m.video && typeof m.video === "object") {
      if ("available" in m.video) member.video.available = !!m.video.available;
      if ("muted" in m.video) member.video.muted = !!m.video.muted;
    }
  }

  function removeMember(memberID) {
    var member = state.members[memberID];
    if (!member) return;
    closeSubscription(member);
    delete state.members[memberID];
    var tile = tileFor(memberID);
    if (tile) tile.remove();
    renderTileCount();
  }

  function clearMembers() {
    Object.keys(state.members).forEach(function (id) { removeMember(id); });
    state.members = {};
  }

  function onJoinIndication(msg) {
    if (state.screen !== "room") return;
    var member = addMember(msg.member);
    if (member) {
      systemChat(member.name + " joined");
      updateSubscription(member);
    }
  }

  function onLeaveIndication(msg) {
    if (state.screen !== "room" || !msg.member) return;
    var member = state.members[msg.member.memberID];
    if (member) {
      systemChat(member.name + " left");
      removeMember(member.memberID);
    }
  }

  function onKickIndication(msg) {
    noReconnect = true;
    session = null;
    teardownMedia(true);
    clearMembers();
    if (msg.timeout === 1) {
      showEnded("The conference has ended", "The conference time is over.", "timeout");
    } else {
      showEnded("You were removed", "You were removed by a moderator.", "kicked");
    }
  }

  function onDescriptionIndication(msg) {
    if (!state.conference) return;
    state.conference.description = String(msg.description || "");
    renderRoom();
  }

  function onLockIndication(msg) {
    if (!state.conference) return;
    state.conference.locked = !!msg.locked;
    systemChat(state.conference.locked ? "The room was locked" : "The room was unlocked");
    renderRoom();
  }

  function onMediaIndication(msg) {
    if (state.screen !== "room" || !msg.member) return;
    var id = msg.member.memberID;
    if (state.me && id === state.me.memberID) {
      mergeMedia(state.me, msg);
      if (state.sharing.audio && state.me.audio.available && state.me.audio.muted !== state.selfMuted) {
        // Muted or unmuted by a moderator (or our own request echoed): follow it.
        state.selfMuted = state.me.audio.muted;
        if (localStream) localStream.getAudioTracks().forEach(function (t) { t.enabled = !state.selfMuted; });
      }
      renderTile(state.me);
      renderControls();
      return;
    }
    var member = state.members[id] || addMember({memberID: id, name: msg.member.name});
    if (!member) return;
    mergeMedia(member, msg);
    renderTile(member);
    updateSubscription(member);
  }

  // Speaking (and mute changes) come as MEDIA_event (protocol.md 4.10); the
  // mute state itself comes with the MEDIA_indication that goes with them.
  function onMediaEvent(msg) {
    if (state.screen !== "room" || !msg.member) return;
    var id = msg.member.memberID;
    var member = (state.me && id === state.me.memberID) ? state.me : state.members[id];
    if (!member) return;
    if (msg.event === "start_speaking") member.speaking = true;
    else if (msg.event === "stop_speaking" || msg.event === "audio_mute") member.speaking = false;
    else return;
    renderTile(member);
  }

  // ---------------------------------------------------------------- chat

  function onChatIndication(msg) {
    if (state.screen !== "room") return;
    var from = msg.from || {};
    var text = decodeChat(msg.message && msg.message.text);
    if (text === null) return;
    addChat({fromID: from.memberID || "", name: from.name || "?", text: text, self: false});
  }

  // The text is transparent to the server; like the original client we
  // JSON-encode our own kinds of message: {"chat": "..."}.  Plain text from
  // other clients is shown as it is; other JSON kinds are not chat.
  function decodeChat(text) {
    if (typeof text !== "string") return null;
    var t = text.trim();
    if (t.charAt(0) === "{") {
      try {
        var obj = JSON.parse(t);
        if (obj && typeof obj === "object") {
          if (typeof obj.chat === "string") return obj.chat;
          logEvent("ignored chat message kind " + Object.keys(obj).join(","));
          return null;
        }
      } catch (e) { /* plain text */ }
    }
    return text;
  }

  function sendChat(text) {
    return request("CHAT_MESSAGE_request", {message: {text: JSON.stringify({chat: text})}})
      .then(function () {
        addChat({fromID: state.me ? state.me.memberID : "", name: state.me ? state.me.name : "",
                 text: text, self: true});
      });
  }

  function addChat(entry) {
    entry.time = Date.now();
    state.chat.push(entry);
    var li = document.createElement("li");
    li.className = entry.system ? "chat-system" : (entry.self ? "chat-self" : "chat-other");
    li.dataset.from = entry.fromID || "";
    if (!entry.system) {
      var who = document.createElement("span");
      who.className = "chat-name";
      who.textContent = entry.self ? "You" : entry.name;
      var when = document.createElement("time");
      when.textContent = new Date(entry.time).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
      li.appendChild(who);
      li.appendChild(when);
    }
    var body = document.createElement("div");
    body.className = "chat-text";
    body.textContent = entry.text;
    li.appendChild(body);
    var log = $("chat-log");
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
  }

  function systemChat(text) {
    addChat({fromID: "", name: "", text: text, self: false, system: true});
  }

  // ---------------------------------------------------------------- media

  function stripCandidates(sdp) {
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

  function waitForGathering(pc) {
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
  function answerOffer(pc, offerSdp, prepare) {
    return pc.setRemoteDescription({type: "offer", sdp: offerSdp})
      .then(function () { return prepare ? prepare(pc) : null; })
      .then(function () { return pc.createAnswer(); })
      .then(function (answer) { return pc.setLocalDescription(answer); })
      .then(function () { return waitForGathering(pc); })
      .then(function () { return stripCandidates(pc.localDescription.sdp); });
  }

  function respond(type, tid, sdp) {
    state.answers.push({type: type, transactionID: tid, sdp: sdp});
    if (state.answers.length > 20) state.answers.shift();
    try {
      sendRaw({messageType: type, status: 200, reason: "OK", sdp: sdp, transactionID: tid});
    } catch (e) {
      logEvent("cannot send " + type + ": " + e.message);
    }
  }

  function respondError(type, tid, status, reason) {
    try {
      sendRaw({messageType: type, status: status, reason: reason, transactionID: tid});
    } catch (e) { /* gone */ }
  }

  // The server offers to receive our media (protocol.md 3.1).  Each request
  // gets a fresh peer connection; a newer request supersedes one still being
  // answered (the server no longer waits for that answer), so it is dropped.
  function onMediaReceiveRequest(msg) {
    var tid = msg.transactionID;
    if (publisher.pc) publisher.pc.close();
    var pc = new RTCPeerConnection({iceServers: iceServers});
    publisher.pc = pc;
    watchPc(pc, "publish", function () {
      // The media path broke (network change, server restart of the media
      // engine): share again, which makes the server send a new offer.
      if (publisher.pc !== pc || state.screen !== "room") return;
      publisher.failures = (publisher.failures || 0) + 1;
      if (publisher.failures > MAX_MEDIA_RETRIES) {
        showNotice("Your camera and microphone could not reach the server. Try sharing again.", "error");
        return;
      }
      showNotice("The connection for your camera and microphone broke; reconnecting it\u2026", "warn", 5000);
      request("MEDIA_SHARE_request", {audio: state.sharing.audio, video: state.sharing.video})
        .catch(function (e) { logEvent("re-share failed: " + e.message); });
    }, function () { publisher.failures = 0; });
    answerOffer(pc, msg.sdp, attachLocalTracks).then(function (sdp) {
      if (publisher.pc !== pc) return;
      respond("MEDIA_RECEIVE_response", tid, sdp);
      logEvent("answered MEDIA_RECEIVE_request");
    }).catch(function (e) {
      if (publisher.pc !== pc) return;
      logEvent("MEDIA_RECEIVE_request failed: " + e);
      respondError("MEDIA_RECEIVE_response", tid, 488, "not acceptable here");
      showNotice("Could not send your media: " + e.message, "error", 8000);
    });
  }

  function attachLocalTracks(pc) {
    var jobs = [];
    var used = {};
    pc.getTransceivers().forEach(function (tr) {
      var kind = tr.receiver && tr.receiver.track ? tr.receiver.track.kind : null;
      var track = null;
      if (localStream && kind && !used[kind] && state.sharing[kind]) {
        track = (kind === "audio" ? localStream.getAudioTracks() : localStream.getVideoTracks())[0] || null;
      }
      if (track) {
        used[kind] = true;
        tr.direction = "sendonly";
        jobs.push(tr.sender.replaceTrack(track));
        if (tr.sender.setStreams) tr.sender.setStreams(localStream);
      } else {
        tr.direction = "inactive";
      }
    });
    return Promise.all(jobs);
  }

  function liveTracks(kind) {
    if (!localStream) return [];
    var tracks = kind === "audio" ? localStream.getAudioTracks() : localStream.getVideoTracks();
    return tracks.filter(function (t) { return t.readyState === "live"; });
  }

  // Open the camera and/or microphone if they are wanted and not open yet.
  function acquireMedia(audio, video) {
    if (!localStream) localStream = new MediaStream();
    var need = {audio: audio && !liveTracks("audio").length, video: video && !liveTracks("video").length};
    if (!need.audio && !need.video) return Promise.resolve(localStream);
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return Promise.reject(new Error("this page has no access to camera or microphone (it needs https or localhost)"));
    }
    var constraints = {
      audio: need.audio ? {echoCancellation: true, noiseSuppression: true} : false,
      video: need.video ? (LOW_RES ? {width: 320, height: 180, frameRate: 15}
                                   : {width: {ideal: 1280}, height: {ideal: 720}}) : false,
    };
    return navigator.mediaDevices.getUserMedia(constraints).then(function (s) {
      s.getTracks().forEach(function (t) {
        if (t.kind === "audio") t.enabled = !state.selfMuted;
        localStream.addTrack(t);
      });
      return localStream;
    });
  }

  // Close what is not shared (the camera light goes off).
  function releaseMedia(keep) {
    if (!localStream) return;
    localStream.getTracks().forEach(function (t) {
      if (!keep[t.kind]) {
        t.stop();
        localStream.removeTrack(t);
      }
    });
  }

  // Share (or stop sharing) microphone and camera: MEDIA_SHARE_request.  What
  // is shared changes with the 200 response, which comes before the server's
  // MEDIA_RECEIVE_request (whose answer attaches the shared tracks).
  function setSharing(audio, video) {
    if (!state.me || !state.me.speaker) return Promise.reject(new Error("listeners cannot share media"));
    return acquireMedia(audio, video).then(function () {
      return request("MEDIA_SHARE_request", {audio: audio, video: video});
    }).then(function (resp) {
      state.sharing = {audio: audio, video: video};
      if (!audio) state.selfMuted = false;
      releaseMedia(state.sharing);
      if (!audio && !video && publisher.pc) {
        publisher.pc.close();
        publisher.pc = null;
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

  function toggleShare(kind) {
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

  function toggleSelfMute() {
    var muted = !state.selfMuted;
    request("MEDIA_MUTE_request", {audio: muted}).then(function () {
      state.selfMuted = muted;
      if (localStream) localStream.getAudioTracks().forEach(function (t) { t.enabled = !muted; });
      renderControls();
      if (state.me) renderTile(state.me);
    }, function (e) {
      showNotice(describeError(e, {action: muted ? "mute" : "unmute yourself"}), "error", 6000);
    });
  }

  // Ask for a member's media whenever what they offer changes (protocol.md 4.6).
  // Changes within a short window (camera, then microphone) make one request:
  // every request replaces the subscription with a new offer.
  function updateSubscription(member) {
    clearTimeout(subscribeTimers[member.memberID]);
    subscribeTimers[member.memberID] = setTimeout(function () {
      delete subscribeTimers[member.memberID];
      if (state.members[member.memberID] === member && state.screen === "room") subscribeNow(member);
    }, SUBSCRIBE_DEBOUNCE_MS);
  }

  function subscribeNow(member) {
    var want = {audio: !!member.audio.available, video: !!member.video.available};
    var have = member.subscribed;
    if (want.audio === have.audio && want.video === have.video) return;
    member.subscribed = want;
    if (!want.audio && !want.video) {
      closeSubscription(member);
    }
    request("MEDIA_request", {members: [{memberID: member.memberID, audio: want.audio, video: want.video}]})
      .catch(function (e) {
        logEvent("MEDIA_request for " + member.memberID + " failed: " + e.message);
        if (state.members[member.memberID] === member) member.subscribed = {audio: false, video: false};
      });
  }

  // The server offers a member's media (protocol.md 3.2).
  function onSdpRequest(msg) {
    var id = msg.transactionID;
    var member = state.members[id] || (msg.member ? addMember(msg.member) : null);
    if (!member) {
      respondError("SDP_response", id, 404, "not found");
      return;
    }
    var sub = member.sub;
    if (sub.pc) sub.pc.close();
    var pc = new RTCPeerConnection({iceServers: iceServers});
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

  function closeSubscription(member) {
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

  function teardownMedia(stopLocal) {
    if (publisher.pc) {
      publisher.pc.close();
      publisher.pc = null;
    }
    Object.keys(state.members).forEach(function (id) { closeSubscription(state.members[id]); });
    if (stopLocal) {
      if (localStream) localStream.getTracks().forEach(function (t) { t.stop(); });
      localStream = null;
      state.sharing = {audio: false, video: false};
      state.selfMuted = false;
    }
  }

  function watchPc(pc, label, onFailed, onConnected) {
    pc.addEventListener("connectionstatechange", function () {
      logEvent(label + ": " + pc.connectionState);
      if (pc.connectionState === "connected" && onConnected) onConnected();
      if (pc.connectionState === "failed" && onFailed) setTimeout(onFailed, MEDIA_RETRY_DELAY_MS);
    });
  }

  // ----------------------------------------------------------------- UI

  function showScreen(name) {
    ["join", "room", "ended"].forEach(function (s) {
      $(s + "-screen").hidden = s !== name;
    });
    $("room-heading").hidden = name !== "room";
    document.body.dataset.screen = name;
  }

  function setBusy(busy) {
    $("join-submit").disabled = busy;
    $("create-submit").disabled = busy;
  }

  var noticeTimer = null;
  function showNotice(text, kind, ms) {
    var n = $("notice");
    n.textContent = text;
    n.className = "notice-" + (kind || "info");
    n.hidden = false;
    clearTimeout(noticeTimer);
    if (ms) noticeTimer = setTimeout(hideNotice, ms);
  }

  function hideNotice() {
    clearTimeout(noticeTimer);
    $("notice").hidden = true;
  }

  var connTicker = null;
  function renderConnection() {
    var el = $("conn-status");
    el.dataset.state = state.connection;
    clearInterval(connTicker);
    connTicker = null;
    if (state.connection === "open") {
      el.textContent = "connected";
      return;
    }
    if (state.connection === "connecting") {
      el.textContent = state.reconnectAttempt ? "reconnecting\u2026" : "connecting\u2026";
      if (state.reconnectAttempt) {
        showNotice("The connection to the server was lost. Reconnecting now (attempt " +
                   state.reconnectAttempt + ")\u2026", "warn");
      }
      return;
    }
    if (!state.reconnectAt) {
      el.textContent = "disconnected";
      return;
    }
    var tick = function () {
      var secs = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
      el.textContent = "offline";
      var where = state.screen === "room" ? " You will rejoin the conference automatically." : "";
      showNotice("The connection to the server was lost. Reconnecting in " + secs + " s\u2026" + where, "warn");
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "small";
      btn.id = "reconnect-now";
      btn.textContent = "Retry now";
      btn.onclick = reconnectNow;
      $("notice").appendChild(btn);
    };
    tick();
    connTicker = setInterval(tick, 1000);
  }

  function setLabel(button, text, icon) {
    button.querySelector(".label").textContent = text;
    button.querySelector("use").setAttribute("href", "#" + icon);
  }

  function tileFor(memberID) {
    var tiles = $("tiles").children;
    for (var i = 0; i < tiles.length; i++) {
      if (tiles[i].dataset.memberId === memberID) return tiles[i];
    }
    return null;
  }

  function initials(name) {
    var parts = String(name || "?").trim().split(/\s+/);
    var s = parts[0].charAt(0) + (parts.length > 1 ? parts[parts.length - 1].charAt(0) : "");
    return s.toUpperCase() || "?";
  }

  function addTile(member) {
    var tile = $("tile-template").content.firstElementChild.cloneNode(true);
    tile.dataset.memberId = member.memberID;
    if (member.self) {
      tile.classList.add("tile-self");
      tile.dataset.self = "true";
    }
    tile.querySelector(".tile-actions").addEventListener("click", function (ev) {
      var btn = ev.target.closest("button");
      if (!btn) return;
      moderatorAction(btn.dataset.action, member.memberID);
    });
    var video = tile.querySelector("video");
    video.addEventListener("resize", function () { renderTile(member); });
    video.addEventListener("playing", function () { renderTile(member); });
    if (member.self) tile.querySelector("audio").remove();
    $("tiles").appendChild(tile);
    renderTile(member);
    renderTileCount();
    return tile;
  }

  function renderTileCount() {
    $("tiles").dataset.count = String($("tiles").children.length);
  }

  function renderTile(member) {
    var tile = tileFor(member.memberID);
    if (!tile) return;
    var role = roleOf(member);
    tile.dataset.name = member.name;
    tile.title = member.ip ? member.name + " \u2013 IP address " + member.ip : "";
    tile.dataset.role = role;
    tile.dataset.speaking = member.speaking ? "true" : "false";
    tile.querySelector(".tile-name").textContent = member.name + (member.self ? " (you)" : "");
    var badge = tile.querySelector(".tile-role");
    badge.textContent = member.webrtc === false ? "phone" : role;
    badge.className = "badge tile-role role-" + role;
    tile.querySelector(".avatar").textContent = initials(member.name);
    var audioOff = !member.audio.available || member.audio.muted;
    var videoOff = !member.video.available || member.video.muted;
    if (member.self) {
      audioOff = !state.sharing.audio || state.selfMuted || (member.audio.available && member.audio.muted);
      videoOff = !state.sharing.video || (member.video.available && member.video.muted);
    }
    tile.querySelector(".icon-audio-muted").hidden = !audioOff;
    tile.querySelector(".icon-video-off").hidden = !videoOff || member.webrtc === false;
    var video = tile.querySelector("video");
    var hasVideo = !videoOff && video.srcObject && video.videoWidth > 0;
    tile.dataset.video = hasVideo ? "true" : "false";
    tile.dataset.audioMuted = audioOff ? "true" : "false";
    var actions = tile.querySelector(".tile-actions");
    var canModerate = !member.self && state.me && state.me.moderator;
    actions.hidden = !canModerate;
    if (canModerate) {
      var ma = actions.querySelector('[data-action="mute-audio"]');
      var mv = actions.querySelector('[data-action="mute-video"]');
      ma.hidden = !member.audio.available;
      mv.hidden = !member.video.available;
      ma.textContent = member.audio.muted ? "Unmute mic" : "Mute mic";
      mv.textContent = member.video.muted ? "Allow video" : "Stop video";
    }
  }

  function attachRemoteStream(member) {
    var tile = tileFor(member.memberID);
    if (!tile || !member.sub.stream) return;
    var video = tile.querySelector("video");
    var audio = tile.querySelector("audio");
    if (video.srcObject !== member.sub.stream) video.srcObject = member.sub.stream;
    if (audio && audio.srcObject !== member.sub.stream) {
      audio.srcObject = member.sub.stream;
      var p = audio.play();
      if (p && p.catch) {
        p.catch(function (e) {
          logEvent("audio play() failed: " + e.name);
          // Autoplay policy: sound needs a click on this page first.
          if (e.name === "NotAllowedError") $("enable-sound").hidden = false;
        });
      }
    }
    video.play().catch(function () {});
    renderTile(member);
  }

  function enableSound() {
    document.querySelectorAll("#tiles audio").forEach(function (a) { a.play().catch(function () {}); });
    $("enable-sound").hidden = true;
  }

  function renderLocalPreview() {
    if (!state.me) return;
    var tile = tileFor(state.me.memberID);
    if (!tile) return;
    var video = tile.querySelector("video");
    var hasVideo = localStream && state.sharing.video && localStream.getVideoTracks().length > 0;
    if (hasVideo) {
      if (video.srcObject !== localStream) video.srcObject = localStream;
      video.play().catch(function () {});
    } else {
      video.srcObject = null;
    }
    renderTile(state.me);
  }

  function renderControls() {
    var me = state.me;
    if (!me) return;
    var role = roleOf(me);
    $("my-role").textContent = "You are " + (role === "listener" ? "a listener" : "a " + role);
    $("my-role").className = "badge role-" + role;
    var cam = $("share-camera"), mic = $("share-mic"), mute = $("mute-mic");
    cam.hidden = mic.hidden = !me.speaker;
    cam.dataset.on = state.sharing.video ? "true" : "false";
    mic.dataset.on = state.sharing.audio ? "true" : "false";
    setLabel(cam, state.sharing.video ? "Stop camera" : "Share camera", state.sharing.video ? "i-cam-off" : "i-cam");
    setLabel(mic, state.sharing.audio ? "Stop microphone" : "Share microphone", state.sharing.audio ? "i-mic-off" : "i-mic");
    mute.hidden = !me.speaker || !state.sharing.audio;
    mute.dataset.on = state.selfMuted ? "true" : "false";
    setLabel(mute, state.selfMuted ? "Unmute" : "Mute", state.selfMuted ? "i-mic" : "i-mic-off");
    var lock = $("lock-toggle");
    lock.hidden = !me.moderator;
    if (state.conference) {
      setLabel(lock, state.conference.locked ? "Unlock room" : "Lock room", state.conference.locked ? "i-unlock" : "i-lock");
    }
    $("edit-description").hidden = !me.moderator || !$("description-form").hidden;
  }

  function renderRoom() {
    var c = state.conference;
    if (!c) return;
    $("room-title").textContent = c.conferenceName;
    $("room-id").textContent = c.conferenceName !== c.conferenceID ? "(" + c.conferenceID + ")" : "";
    document.title = c.conferenceName + " \u2013 AhoyConference";
    var desc = $("room-description");
    desc.textContent = c.description;
    desc.dataset.empty = c.description ? "false" : "true";
    $("description-bar").hidden = !c.description && !(state.me && state.me.moderator);
    $("lock-state").hidden = !c.locked;
    document.body.dataset.locked = c.locked ? "true" : "false";
    renderControls();
    if (state.me) renderTile(state.me);
    Object.keys(state.members).forEach(function (id) { renderTile(state.members[id]); });
  }

  function startCountdown() {
    stopCountdown();
    var c = state.conference;
    var el = $("countdown");
    if (!c || !c.deadline) {
      $("countdown-pill").hidden = true;
      return;
    }
    var tick = function () {
      var left = Math.max(0, Math.round((c.deadline - Date.now()) / 1000));
      var h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
      el.textContent = (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" +
        String(s).padStart(2, "0") + " left";
      el.dataset.seconds = String(left);
      $("countdown-pill").classList.toggle("pill-urgent", left <= 60);
    };
    $("countdown-pill").hidden = false;
    tick();
    countdownTimer = setInterval(tick, 1000);
  }

  function stopCountdown() {
    clearInterval(countdownTimer);
    countdownTimer = null;
    $("countdown-pill").hidden = true;
  }

  function moderatorAction(action, memberID) {
    var member = state.members[memberID];
    if (!member) return;
    var p;
    if (action === "kick") {
      p = request("CONFERENCE_KICK_request", {memberID: memberID});
    } else if (action === "mute-audio") {
      p = request("MEDIA_MUTE_request", {memberID: memberID, audio: !member.audio.muted});
    } else if (action === "mute-video") {
      p = request("MEDIA_MUTE_request", {memberID: memberID, video: !member.video.muted});
    } else {
      return;
    }
    p.catch(function (e) {
      showNotice(describeError(e, {action: action === "kick" ? "remove members" : "mute members"}), "error", 6000);
    });
  }

  function readCreateForm() {
    var fields = {};
    var text = ["conferenceID", "conferenceName", "description", "password", "listenerPassword", "moderatorPassword"];
    var form = $("create-form");
    text.forEach(function (name) {
      var v = form.elements[name].value;
      if (name === "conferenceID" || name === "conferenceName") v = v.trim();
      if (v) fields[name] = v;
    });
    ["maxMember", "maxVideoBitrate"].forEach(function (name) {
      var v = form.elements[name].value.trim();
      if (v) fields[name] = Math.max(1, Math.round(Number(v)));
    });
    var minutes = form.elements.timeLimit.value.trim();
    if (minutes) fields.timeLimit = Math.max(1, Math.round(Number(minutes) * 60));
    return fields;
  }

  function create(fields, name) {
    setBusy(true);
    return request("CONFERENCE_CREATE_request", fields).then(function (resp) {
      setBusy(false);
      var password = fields.moderatorPassword || fields.password || "";
      $("join-room").value = resp.conferenceID;
      return join(resp.conferenceID, name, password);
    }, function (err) {
      setBusy(false);
      state.lastError = {request: "create", status: err.status || 0, reason: err.reason || "",
                         message: describeError(err, {create: true})};
      throw err;
    });
  }

  function showFormError(id, text) {
    var el = $(id);
    el.textContent = text;
    el.hidden = !text;
  }

  function wireUI() {
    if (params.get("room")) $("join-room").value = params.get("room");
    if (params.get("name")) $("join-name").value = params.get("name");
    else {
      try { $("join-name").value = localStorage.getItem("ahoy.name") || ""; } catch (e) { /* private mode */ }
    }

    $("join-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      showFormError("join-error", "");
      var room = $("join-room").value.trim();
      var name = $("join-name").value.trim();
      if (!room || !name) {
        showFormError("join-error", "Please enter the conference ID and your name.");
        return;
      }
      try { localStorage.setItem("ahoy.name", name); } catch (e) { /* private mode */ }
      join(room, name, $("join-password").value).catch(function (e) {
        showFormError("join-error", state.lastError ? state.lastError.message : describeError(e));
      });
    });

    $("create-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      showFormError("create-error", "");
      showFormError("join-error", "");
      var name = $("join-name").value.trim();
      if (!name) {
        showFormError("create-error", "Please enter your name in the join form above first.");
        $("join-name").focus();
        return;
      }
      create(readCreateForm(), name).catch(function (e) {
        var text = state.lastError ? state.lastError.message : describeError(e);
        if (state.lastError && state.lastError.request === "join") showFormError("join-error", text);
        else showFormError("create-error", text);
      });
    });

    $("share-camera").addEventListener("click", function () { toggleShare("video"); });
    $("share-mic").addEventListener("click", function () { toggleShare("audio"); });
    $("mute-mic").addEventListener("click", toggleSelfMute);
    $("enable-sound").addEventListener("click", enableSound);
    $("leave").addEventListener("click", leave);
    $("back-to-start").addEventListener("click", backToStart);
    $("lock-toggle").addEventListener("click", function () {
      if (!state.conference) return;
      request("CONFERENCE_LOCK_request", {locked: !state.conference.locked}).catch(function (e) {
        showNotice(describeError(e, {action: "lock the room"}), "error", 6000);
      });
    });

    $("edit-description").addEventListener("click", function () {
      $("description-input").value = state.conference ? state.conference.description : "";
      $("description-form").hidden = false;
      $("room-description").hidden = true;
      renderControls();
      $("description-input").focus();
    });
    var closeDescription = function () {
      $("description-form").hidden = true;
      $("room-description").hidden = false;
      renderControls();
    };
    $("description-cancel").addEventListener("click", closeDescription);
    $("description-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      request("CONFERENCE_DESCRIPTION_request", {description: $("description-input").value})
        .then(closeDescription, function (e) {
          showNotice(describeError(e, {action: "change the description"}), "error", 6000);
        });
    });

    $("chat-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = $("chat-input");
      var text = input.value;
      if (!text.trim()) return;
      input.value = "";
      sendChat(text).catch(function (e) {
        input.value = text;
        showNotice("Your message was not sent: " + describeError(e), "error", 6000);
      });
    });

    window.addEventListener("beforeunload", function () {
      noReconnect = true;
      if (ws) ws.close(1000);
    });
  }

  // ------------------------------------------------------------ test hook

  // Per remote member: what their video element shows and what the
  // subscription's getStats() says (frames decoded, audio received).
  function mediaStats() {
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
          if (s.kind === "video") out.framesDecoded += s.framesDecoded || 0;
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

  function publishStats() {
    if (!publisher.pc) return Promise.resolve({connectionState: "none", framesEncoded: 0, audioBytes: 0, videoBytes: 0});
    var out = {connectionState: publisher.pc.connectionState, framesEncoded: 0, audioBytes: 0,
               videoBytes: 0, frameWidth: 0, timestamp: 0};
    return publisher.pc.getStats().then(function (report) {
      report.forEach(function (s) {
        if (s.type !== "outbound-rtp") return;
        if (s.kind === "video") {
          out.framesEncoded += s.framesEncoded || 0;
          out.videoBytes += s.bytesSent || 0;
          out.frameWidth = Math.max(out.frameWidth, s.frameWidth || 0);
          out.timestamp = s.timestamp;
        }
        if (s.kind === "audio") out.audioBytes += s.bytesSent || 0;
      });
      return out;
    });
  }

  // The addresses of the candidate pair each peer connection uses (tests
  // check that media stays on 127.0.0.1).
  function selectedPairs() {
    var pcs = [];
    if (publisher.pc) pcs.push(["publish", publisher.pc]);
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
          out.localType = l ? l.candidateType : null;          // "relay": through TURN
          out.relayProtocol = l ? (l.relayProtocol || null) : null;  // to the TURN server
        }
        return out;
      });
    }));
  }

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
    // Tests: close the socket as if the network dropped.
    dropConnection: function () { if (ws) ws.close(4000, "test"); },
  };

  wireUI();
  showScreen("join");
  connect();
})();
