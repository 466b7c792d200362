/*
 * AhoyConference browser client: the state every module shares.
 *
 * URL parameters (read here):
 *   room=ID          conference ID to prefill (and the room shown after joining)
 *   name=NAME        display name to prefill
 *   loopbackOnly=1   tests only: drop every ICE candidate that is not
 *                    127.0.0.1 from our answers (media stays on loopback), and
 *                    install the test hook (testhook.js)
 *   lowres=1         capture 320x180 at 15 fps (tests on small machines)
 *   camera=WxH       capture this size (e.g. 960x540) instead of 1280x720
 *   quality=Q        ask for every member's video in quality Q (low, medium,
 *                    high; protocol.md 4.11) instead of choosing by tile size
 *   smallTiles=N     tiles count as small (their video asked for in "low",
 *                    the speaker's in "high") from N members with video on
 *                    (default 5)
 */
export var params = new URLSearchParams(window.location.search);
export var LOOPBACK_ONLY = params.get("loopbackOnly") === "1";
// tests only: window.ahoy (testhook.js), also where candidates are not on loopback
export var TEST_HOOK = LOOPBACK_ONLY || params.get("testhook") === "1";
export var LOW_RES = params.get("lowres") === "1";
export var CAMERA = /^(\d{2,4})x(\d{2,4})$/.exec(params.get("camera") || "1280x720") || [0, 1280, 720];
export var QUALITY = ["low", "medium", "high"].indexOf(params.get("quality")) >= 0 ? params.get("quality") : null;
// Simulcast layers we send when the server's offer asks for them (its rids,
// lowest first): how much smaller than the camera, and at most how many bit/s
// (the highest layer is bounded by the share's maxVideoBitrate instead).
export var LAYERS = [{scaleResolutionDownBy: 4, maxBitrate: 150000},
                     {scaleResolutionDownBy: 2, maxBitrate: 500000},
                     {scaleResolutionDownBy: 1}];
// From this many other members with video on, their tiles are small: ask for "low".
export var SMALL_TILES_FROM = /^[1-9]\d?$/.test(params.get("smallTiles") || "") ? Number(params.get("smallTiles")) : 5;
export var REQUEST_TIMEOUT_MS = 20000;
export var GATHER_TIMEOUT_MS = 10000;
export var BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
export var SUBSCRIBE_DEBOUNCE_MS = 250;
export var MEDIA_RETRY_DELAY_MS = 2000;   // after a peer connection failed, ask again
export var MAX_MEDIA_RETRIES = 3;         // consecutive failures before giving up

// ---------------------------------------------------------------- state

export var state = {
  connection: "connecting",    // connecting | open | closed
  reconnectAttempt: 0,
  reconnectAt: null,           // ms timestamp of the next attempt
  screen: "join",              // join | room | ended
  joining: false,
  me: null,                    // {memberID, name, moderator, speaker, audio, video, speaking}
  conference: null,            // {conferenceID, conferenceName, description, locked, deadline}
  members: {},                 // memberID -> member (see addMember)
  speakerID: null,             // who last started speaking: asked for in "high" quality
  chat: [],                    // {fromID, name, text, self, time}
  sharing: {audio: false, video: false},
  selfMuted: false,
  lastError: null,             // {request, status, reason, message}
  endReason: null,             // "kicked" | "timeout" | "left" | "gone"
  log: [],                     // recent events, for debugging and tests
  answers: [],                 // the last SDP answers sent (tests check their candidates)
  iceServers: [],              // from the CONFERENCE_JOIN_response, for every RTCPeerConnection
};

// What several modules change: the socket, the session to rejoin, the
// local media and the publishing peer connection.
export var rt = {
  ws: null,
  session: null,               // {conferenceID, name, password} to rejoin after a reconnect
  localStream: null,
  publisher: {pc: null, failures: 0},
  noReconnect: false,          // set by a kick: the server closes the socket on purpose
  serverURL: null,             // another node of a cluster, after a 302 (docs/cluster.md)
};

export function $(id) { return document.getElementById(id); }

export function logEvent(text) {
  state.log.push({time: Date.now(), text: text});
  if (state.log.length > 200) state.log.shift();
  if (window.console && console.debug) console.debug("[ahoy] " + text);
}
