/*
 * AhoyConference browser client, the entry point (index.html loads it as a
 * module: plain ES modules, no build step, no external resources).
 *
 *   state.js       the shared state, the URL parameters
 *   protocol.js    messages: requests and responses, errors, dispatch
 *   connection.js  the WebSocket, reconnecting, rejoining
 *   conference.js  join, leave, members, indications, chat
 *   media.js       publishing and subscribing (RTCPeerConnection)
 *   tiles.js       the members' tiles
 *   ui.js          screens, notices, controls, forms
 *   testhook.js    window.ahoy for the tests (loaded with ?loopbackOnly=1 or ?testhook=1 only)
 */
import {
  onChatIndication, onDescriptionIndication, onJoinIndication, onKickIndication,
  onLeaveIndication, onLockIndication, onMediaEvent, onMediaIndication,
} from "./conference.js";
import {connect} from "./connection.js";
import {onMediaReceiveRequest, onSdpRequest} from "./media.js";
import {handlers} from "./protocol.js";
import {TEST_HOOK} from "./state.js";
import {showScreen, wireUI} from "./ui.js";

Object.assign(handlers, {
  MEDIA_RECEIVE_request: onMediaReceiveRequest,
  SDP_request: onSdpRequest,
  CONFERENCE_JOIN_indication: onJoinIndication,
  CONFERENCE_LEAVE_indication: onLeaveIndication,
  CONFERENCE_KICK_indication: onKickIndication,
  CONFERENCE_DESCRIPTION_indication: onDescriptionIndication,
  CONFERENCE_LOCK_indication: onLockIndication,
  MEDIA_indication: onMediaIndication,
  MEDIA_event: onMediaEvent,
  CHAT_MESSAGE_indication: onChatIndication,
});

wireUI();
showScreen("join");
if (TEST_HOOK) {
  import("./testhook.js").then(function (hook) { hook.install(); connect(); });
} else {
  connect();
}
