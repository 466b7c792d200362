/*
 * The page: screens, notices, the connection status, the controls, the room
 * heading and countdown, the forms and their buttons.
 */
import {backToStart, join, leave, roleOf, sendChat} from "./conference.js";
import {reconnectNow} from "./connection.js";
import {toggleSelfMute, toggleShare} from "./media.js";
import {describeError, request} from "./protocol.js";
import {$, params, rt, state} from "./state.js";
import {enableSound, renderTile, setLabel} from "./tiles.js";

let countdownTimer = null;

// ----------------------------------------------------------------- UI

export function showScreen(name) {
  ["join", "room", "ended"].forEach(function (s) {
    $(s + "-screen").hidden = s !== name;
  });
  $("room-heading").hidden = name !== "room";
  document.body.dataset.screen = name;
}

export function setBusy(busy) {
  $("join-submit").disabled = busy;
  $("create-submit").disabled = busy;
}

let noticeTimer = null;
export function showNotice(text, kind, ms) {
  var n = $("notice");
  n.textContent = text;
  n.className = "notice-" + (kind || "info");
  n.hidden = false;
  clearTimeout(noticeTimer);
  if (ms) noticeTimer = setTimeout(hideNotice, ms);
}

export function hideNotice() {
  clearTimeout(noticeTimer);
  $("notice").hidden = true;
}

let connTicker = null;
export function renderConnection() {
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


export function renderControls() {
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

export function renderRoom() {
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

export function startCountdown() {
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

export function stopCountdown() {
  clearInterval(countdownTimer);
  countdownTimer = null;
  $("countdown-pill").hidden = true;
}

export function moderatorAction(action, memberID) {
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

export function readCreateForm() {
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

export function create(fields, name) {
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

export function showFormError(id, text) {
  var el = $(id);
  el.textContent = text;
  el.hidden = !text;
}

export function wireUI() {
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
    rt.noReconnect = true;
    if (rt.ws) rt.ws.close(1000);
  });
}
