/*
 * The JSON WebSocket protocol of docs/protocol.md, the message layer:
 * transaction IDs, request() and its response (or a RequestError), error
 * texts, and the dispatch of everything else to `handlers` by messageType.
 */
import {REQUEST_TIMEOUT_MS, logEvent, rt} from "./state.js";

// What to do with each message that is not a response: messageType ->
// function(message), filled in by main.js.
export var handlers = Object.create(null);

let pending = new Map();       // transactionID -> {resolve, reject, timer, type}
let tidCounter = 0;

export function newTransactionID() {
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

export var STATUS_TEXT = {
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

export function describeError(err, context) {
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

export function RequestError(response) {
  this.status = response.status;
  this.reason = response.reason;
  this.response = response;
  this.message = response.status + " " + response.reason;
}
RequestError.prototype = Object.create(Error.prototype);

export function sendRaw(obj) {
  if (!rt.ws || rt.ws.readyState !== WebSocket.OPEN) {
    throw new Error("not connected to the server");
  }
  rt.ws.send(JSON.stringify(obj));
}

// Send a request; resolves with the 200 response, rejects with a
// RequestError for any other status.
export function request(messageType, fields) {
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
export function networkError(text) {
  var e = new Error(text);
  e.network = true;
  return e;
}

export function failPending(reason) {
  pending.forEach(function (p) {
    clearTimeout(p.timer);
    p.reject(networkError(reason));
  });
  pending.clear();
}

export function onMessage(event) {
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
  var handler = handlers[type];
  if (handler) return handler(msg);
  logEvent("unhandled message " + type + " " + (msg.status || ""));
}
