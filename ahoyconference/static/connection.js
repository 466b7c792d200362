/*
 * The WebSocket to the server that serves this page (same host and port,
 * path "/", subprotocol "conference-protocol"): open it, reconnect with
 * back-off, rejoin the conference after a reconnect.
 */
import {clearMembers, rejoin} from "./conference.js";
import {teardownMedia} from "./media.js";
import {failPending, onMessage} from "./protocol.js";
import {BACKOFF_MS, logEvent, rt, state} from "./state.js";
import {renderConnection, showNotice} from "./ui.js";

let reconnectTimer = null;

export function socketURL() {
  if (rt.serverURL) return rt.serverURL;
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + window.location.host + "/";
}

// A 302 (protocol.md 4.10): the conference lives on another node of the
// cluster.  Close this socket (quietly: no reconnect, no "lost" notice) and
// open one to that node; resolves once it is open.
export function moveTo(url) {
  return new Promise(function (resolve, reject) {
    if (!/^wss?:\/\//.test(url)) {
      reject(new Error("not a WebSocket URL: " + url));
      return;
    }
    var old = rt.ws;
    rt.ws = null;
    if (old) old.close(1000, "moved");
    rt.serverURL = url;
    logEvent("moving to " + url);
    connect();
    var sock = rt.ws;
    if (!sock) {
      reject(new Error("cannot open WebSocket to " + url));
      return;
    }
    sock.addEventListener("open", function () { resolve(); });
    sock.addEventListener("close", function () { reject(new Error("cannot reach " + url)); });
  });
}

export function connect() {
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
  rt.ws = sock;
  sock.onopen = function () {
    if (rt.ws !== sock) return;
    state.connection = "open";
    var wasReconnect = state.reconnectAttempt > 0;
    state.reconnectAttempt = 0;
    logEvent("connected");
    renderConnection();
    if (rt.session && wasReconnect) {
      rejoin();
    } else if (wasReconnect) {
      showNotice("Connected to the server again.", "ok", 4000);
    }
  };
  sock.onmessage = function (ev) { if (rt.ws === sock) onMessage(ev); };
  sock.onclose = function (ev) {
    if (rt.ws !== sock) return;
    rt.ws = null;
    logEvent("socket closed (" + ev.code + ")");
    failPending("connection to the server lost");
    state.connection = "closed";
    if (rt.noReconnect) {
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

export function scheduleReconnect() {
  var delay = BACKOFF_MS[Math.min(state.reconnectAttempt, BACKOFF_MS.length - 1)];
  delay = Math.round(delay * (0.8 + Math.random() * 0.4));
  state.reconnectAttempt += 1;
  state.reconnectAt = Date.now() + delay;
  state.connection = "closed";
  renderConnection();
  reconnectTimer = setTimeout(connect, delay);
}

export function reconnectNow() {
  if (rt.ws) return;
  connect();
}

// ------------------------------------------------------------- join etc.
