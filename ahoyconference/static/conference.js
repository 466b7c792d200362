/*
 * The conference: join, rejoin, leave, the members and what the server
 * tells about them (join, leave, kick, lock, description, media state,
 * speaking), and chat.
 */
import {connect, moveTo} from "./connection.js";
import {closeSubscription, refreshQuality, setSharing, teardownMedia, updateSubscription} from "./media.js";
import {describeError, request} from "./protocol.js";
import {$, logEvent, rt, state} from "./state.js";
import {addTile, renderTile, renderTileCount, tileFor} from "./tiles.js";
import {hideNotice, renderControls, renderRoom, setBusy, showNotice, showScreen, startCountdown, stopCountdown} from "./ui.js";

export function roleOf(m) {
  if (m.moderator) return "moderator";
  if (m.speaker) return "speaker";
  return "listener";
}

// The join, following a cluster's 302 to the node that hosts the
// conference (at most MAX_MOVES times), as the original client does.
var MAX_MOVES = 3;

function joinRequest(fields, moves) {
  return request("CONFERENCE_JOIN_request", fields).catch(function (err) {
    var url = err && err.status === 302 && err.response && err.response.url;
    if (!url || moves >= MAX_MOVES) throw err;
    return moveTo(url).then(function () { return joinRequest(fields, moves + 1); });
  });
}

export function join(conferenceID, name, password) {
  if (state.joining) return Promise.reject(new Error("already joining"));
  state.joining = true;
  setBusy(true);
  var fields = {conferenceID: conferenceID, name: name};
  if (password) fields.password = password;
  return joinRequest(fields, 0).then(function (resp) {
    state.joining = false;
    setBusy(false);
    rt.session = {conferenceID: resp.conferenceID || conferenceID, name: name, password: password || ""};
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

export function rejoin() {
  var s = rt.session;
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
      if (rt.ws) rt.ws.close(4001, "no answer to rejoin");
      return;
    }
    rt.session = null;
    var text = describeError(err, {conferenceID: s.conferenceID, join: true});
    teardownMedia(true);
    showEnded("Could not rejoin the conference", text, "gone");
    hideNotice();
  });
}

export function enterRoom(resp, name) {
  rt.noReconnect = false;
  state.iceServers = Array.isArray(resp.iceServers) ? resp.iceServers : [];
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

export function leave() {
  var wasIn = state.screen === "room";
  rt.session = null;
  teardownMedia(true);
  clearMembers();
  if (wasIn && rt.ws && rt.ws.readyState === WebSocket.OPEN) {
    request("CONFERENCE_LEAVE_request", {}).catch(function () {});
  }
  showEnded("You left the conference", "", "left");
}

export function showEnded(title, message, reason) {
  stopCountdown();
  state.screen = "ended";
  state.endReason = reason;
  $("end-title").textContent = title;
  $("end-message").textContent = message;
  document.title = "AhoyConference";
  showScreen("ended");
}

export function backToStart() {
  state.screen = "join";
  state.me = null;
  state.conference = null;
  state.chat = [];
  $("chat-log").textContent = "";
  $("tiles").textContent = "";
  showScreen("join");
  rt.noReconnect = false;
  if (!rt.ws) {
    state.reconnectAttempt = 0;
    connect();
  }
}

// ------------------------------------------------------------- members

export function addMember(m) {
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

export function mergeMedia(member, m) {
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

export function removeMember(memberID) {
  var member = state.members[memberID];
  if (!member) return;
  closeSubscription(member);
  delete state.members[memberID];
  var tile = tileFor(memberID);
  if (tile) tile.remove();
  renderTileCount();
}

export function clearMembers() {
  Object.keys(state.members).forEach(function (id) { removeMember(id); });
  state.members = {};
  state.speakerID = null;
}

export function onJoinIndication(msg) {
  if (state.screen !== "room") return;
  var member = addMember(msg.member);
  if (member) {
    systemChat(member.name + " joined");
    updateSubscription(member);
  }
}

export function onLeaveIndication(msg) {
  if (state.screen !== "room" || !msg.member) return;
  var member = state.members[msg.member.memberID];
  if (member) {
    systemChat(member.name + " left");
    removeMember(member.memberID);
  }
}

export function onKickIndication(msg) {
  rt.noReconnect = true;
  rt.session = null;
  teardownMedia(true);
  clearMembers();
  if (msg.timeout === 1) {
    showEnded("The conference has ended", "The conference time is over.", "timeout");
  } else {
    showEnded("You were removed", "You were removed by a moderator.", "kicked");
  }
}

export function onDescriptionIndication(msg) {
  if (!state.conference) return;
  state.conference.description = String(msg.description || "");
  renderRoom();
}

export function onLockIndication(msg) {
  if (!state.conference) return;
  state.conference.locked = !!msg.locked;
  systemChat(state.conference.locked ? "The room was locked" : "The room was unlocked");
  renderRoom();
}

export function onMediaIndication(msg) {
  if (state.screen !== "room" || !msg.member) return;
  var id = msg.member.memberID;
  if (state.me && id === state.me.memberID) {
    mergeMedia(state.me, msg);
    if (state.sharing.audio && state.me.audio.available && state.me.audio.muted !== state.selfMuted) {
      // Muted or unmuted by a moderator (or our own request echoed): follow it.
      state.selfMuted = state.me.audio.muted;
      if (rt.localStream) rt.localStream.getAudioTracks().forEach(function (t) { t.enabled = !state.selfMuted; });
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

// Speaking and mute changes come one by one as MEDIA_event (protocol.md
// 4.10); the MEDIA_indication that goes with a mute change carries the whole
// state, and reading `speaking` from it stays.  A muted member is not speaking.
var MEDIA_EVENTS = {
  start_speaking: function (m) { m.speaking = true; },
  stop_speaking: function (m) { m.speaking = false; },
  audio_mute: function (m) { m.audio.muted = true; m.speaking = false; },
  audio_unmute: function (m) { m.audio.muted = false; },
  video_mute: function (m) { m.video.muted = true; },
  video_unmute: function (m) { m.video.muted = false; },
};

export function onMediaEvent(msg) {
  if (state.screen !== "room" || !msg.member) return;
  if (!Object.prototype.hasOwnProperty.call(MEDIA_EVENTS, msg.event)) {
    logEvent("unknown MEDIA_event " + msg.event);
    return;
  }
  var id = msg.member.memberID;
  var member = state.me && id === state.me.memberID ? state.me : state.members[id];
  if (!member) return;
  MEDIA_EVENTS[msg.event](member);
  if (msg.event === "start_speaking" && member !== state.me && state.speakerID !== id) {
    // the new speaker's video in full, the previous one's back to its tile's size
    var previous = state.members[state.speakerID];
    state.speakerID = id;
    refreshQuality(member);
    if (previous) refreshQuality(previous);
  }
  renderTile(member);
  if (member === state.me) renderControls();
}

// ---------------------------------------------------------------- chat

export function onChatIndication(msg) {
  if (state.screen !== "room") return;
  var from = msg.from || {};
  var text = decodeChat(msg.message && msg.message.text);
  if (text === null) return;
  addChat({fromID: from.memberID || "", name: from.name || "?", text: text, self: false});
}

// The text is transparent to the server; like the original client we
// JSON-encode our own kinds of message: {"chat": "..."}.  Plain text from
// other clients is shown as it is; other JSON kinds are not chat.
export function decodeChat(text) {
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

export function sendChat(text) {
  return request("CHAT_MESSAGE_request", {message: {text: JSON.stringify({chat: text})}})
    .then(function () {
      addChat({fromID: state.me ? state.me.memberID : "", name: state.me ? state.me.name : "",
               text: text, self: true});
    });
}

export function addChat(entry) {
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

export function systemChat(text) {
  addChat({fromID: "", name: "", text: text, self: false, system: true});
}

// ---------------------------------------------------------------- media
