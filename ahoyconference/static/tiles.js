/*
 * One tile per member (ourselves included): name, role, media state,
 * speaking, the remote stream, and the moderator's buttons.
 */
import {roleOf} from "./conference.js";
import {$, logEvent, rt, state} from "./state.js";
import {moderatorAction} from "./ui.js";

export function setLabel(button, text, icon) {
  button.querySelector(".label").textContent = text;
  button.querySelector("use").setAttribute("href", "#" + icon);
}

export function tileFor(memberID) {
  var tiles = $("tiles").children;
  for (var i = 0; i < tiles.length; i++) {
    if (tiles[i].dataset.memberId === memberID) return tiles[i];
  }
  return null;
}

export function initials(name) {
  var parts = String(name || "?").trim().split(/\s+/);
  var s = parts[0].charAt(0) + (parts.length > 1 ? parts[parts.length - 1].charAt(0) : "");
  return s.toUpperCase() || "?";
}

export function addTile(member) {
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

export function renderTileCount() {
  $("tiles").dataset.count = String($("tiles").children.length);
}

export function renderTile(member) {
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

export function attachRemoteStream(member) {
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

export function enableSound() {
  document.querySelectorAll("#tiles audio").forEach(function (a) { a.play().catch(function () {}); });
  $("enable-sound").hidden = true;
}

export function renderLocalPreview() {
  if (!state.me) return;
  var tile = tileFor(state.me.memberID);
  if (!tile) return;
  var video = tile.querySelector("video");
  var hasVideo = rt.localStream && state.sharing.video && rt.localStream.getVideoTracks().length > 0;
  if (hasVideo) {
    if (video.srcObject !== rt.localStream) video.srcObject = rt.localStream;
    video.play().catch(function () {});
  } else {
    video.srcObject = null;
  }
  renderTile(state.me);
}
