// A client with the wire habits of the protocol authors' own client, ahoy-js
// (docs/protocol.md 4.10), written from its documented behaviour for
// tests/test_ahoyjs.py.  It is not ahoy-js: it only talks the way ahoy-js
// talks, and records what it sees so that the test can check it.
//
// Habits reproduced:
// - create on one socket (null listener password), close it, join on a new one;
//   486 on create means "exists, go on and join";
// - responses (MEDIA_RECEIVE_response, SDP_response) carry no status, and their
//   SDP is escape()d and sent right after createAnswer(), before ICE gathering:
//   no a=candidate lines at all;
// - MEDIA_request with the member's ID as transactionID and 0/1 flags, sent again
//   on every MEDIA_indication with available: true (after dropping that member's
//   media), and for every sharing member listed in the join response;
// - a new peer connection for every SDP_request; the old one is not closed;
// - lock with `lock`, invitations with `invitation`, MEDIA_event for speaking.
'use strict';

class LegacyClient {
  constructor(wsUrl, name) {
    this.wsUrl = wsUrl;
    this.name = name;
    this.ws = null;
    this.memberID = null;
    this.members = {};           // memberID -> {name, audio, video, pc, serial}
    this.received = [];          // every message received, in order
    this.sent = [];              // every message sent, in order
    this.callbacks = {};         // transactionID -> function(msg)
    this.localStream = null;
    this.publishPc = null;
    this.pcs = [];               // every peer connection ever made
    this.serial = 0;
    this.closedCodes = [];
  }

  send(msg) {
    if (msg.transactionID === undefined) msg.transactionID = 'id' + Math.random();
    this.sent.push(msg);
    this.ws.send(JSON.stringify(msg));
    return msg.transactionID;
  }

  open(onopen) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.wsUrl, 'conference-protocol');
      ws.onmessage = (event) => this.dispatch(JSON.parse(event.data));
      ws.onopen = () => { this.ws = ws; resolve(ws); };
      ws.onerror = (e) => reject(new Error('websocket error'));
      ws.onclose = (e) => this.closedCodes.push(e.code);
    });
  }

  request(msg) {
    return new Promise((resolve) => {
      const tid = msg.transactionID || ('id' + Math.random());
      msg.transactionID = tid;
      this.callbacks[tid] = resolve;
      this.send(msg);
    });
  }

  // create(wsUrl, 'my conference', null, 'sp34k3r', 'm0d3r4t0r'): its own socket.
  async create(conferenceID, listenerPassword, speakerPassword, moderatorPassword) {
    await this.open();
    const response = await this.request({
      messageType: 'CONFERENCE_CREATE_request', conferenceID: conferenceID,
      conferenceName: conferenceID, listenerPassword: listenerPassword,
      password: speakerPassword, moderatorPassword: moderatorPassword,
    });
    this.ws.onclose = null;
    this.ws.close();
    this.ws = null;
    if (response.status !== 200 && response.status !== 486) {
      throw new Error('create failed: ' + response.status + ' ' + response.reason);
    }
    return response.status;
  }

  async join(conferenceID, password) {
    await this.open();
    return this.request({messageType: 'CONFERENCE_JOIN_request', conferenceID: conferenceID,
                         name: this.name, password: password});
  }

  async joinWithInvitation(invitation) {
    await this.open();
    return this.request({messageType: 'CONFERENCE_JOIN_request', invitation: invitation});
  }

  lock(locked) {
    return this.request({messageType: 'CONFERENCE_LOCK_request', lock: locked});
  }

  chat(text) {
    return this.request({messageType: 'CHAT_MESSAGE_request', message: {text: text}});
  }

  async publish(audio, video, bitrate) {
    this.localStream = await navigator.mediaDevices.getUserMedia(
        {audio: audio, video: video ? {width: 320, height: 240} : false});
    this.send({messageType: 'MEDIA_SHARE_request', audio: audio, video: video,
               maxVideoBitrate: bitrate});
  }

  requestMedia(member) {
    // ahoy-js: audio & available, video & available: numbers, and the
    // member's ID as the transactionID.
    this.send({messageType: 'MEDIA_request', transactionID: member.memberID, members: [{
      memberID: member.memberID, audio: (1 & member.audio), video: (1 & member.video),
    }]});
  }

  dispatch(msg) {
    this.received.push(msg);
    const type = msg.messageType;
    if (type.endsWith('_response') && this.callbacks[msg.transactionID]) {
      const callback = this.callbacks[msg.transactionID];
      delete this.callbacks[msg.transactionID];
      if (type === 'CONFERENCE_JOIN_response' && msg.status === 200) this.joined(msg);
      callback(msg);
      return;
    }
    switch (type) {
      case 'CONFERENCE_JOIN_indication':
        this.members[msg.member.memberID] = this.memberFrom(msg.member);
        break;
      case 'CONFERENCE_LEAVE_indication':
        delete this.members[msg.member.memberID];
        break;
      case 'MEDIA_indication': {
        const member = this.members[msg.member.memberID];
        if (!member) break;
        member.audio = msg.audio.available;
        member.video = msg.video.available;
        member.speaking = msg.audio.speaking;
        if (member.audio || member.video) {
          member.stream = null;     // ahoy-js drops the member's video element...
          this.requestMedia(member); // ...and asks again
        }
        break;
      }
      case 'MEDIA_event': {
        const member = this.members[msg.member.memberID];
        if (member && msg.event === 'start_speaking') member.speaking = true;
        if (member && (msg.event === 'stop_speaking' || msg.event === 'audio_mute')) {
          member.speaking = false;
        }
        break;
      }
      case 'MEDIA_RECEIVE_request':
        this.answerPublish(msg);
        break;
      case 'SDP_request':
        this.answerSubscribe(msg);
        break;
    }
  }

  memberFrom(m) {
    return {memberID: m.memberID, name: m.name, audio: m.audio.available,
            video: m.video.available, speaking: m.audio.speaking, pc: null, serial: 0};
  }

  joined(msg) {
    this.memberID = msg.memberID;
    for (const m of msg.members) {
      const member = this.memberFrom(m);
      this.members[m.memberID] = member;
      if (member.audio || member.video) this.requestMedia(member);
    }
  }

  // The answer goes out straight after createAnswer(): escape()d, no status,
  // no candidates (gathering starts only with setLocalDescription).
  async answer(pc, offer, responseType, transactionID) {
    await pc.setRemoteDescription({type: 'offer', sdp: unescape(offer)});
    const description = await pc.createAnswer();
    this.send({messageType: responseType, sdp: escape(description.sdp),
               transactionID: transactionID});
    await pc.setLocalDescription(description);
  }

  async answerPublish(msg) {
    const pc = new RTCPeerConnection();
    this.pcs.push(pc);
    this.publishPc = pc;
    for (const track of this.localStream.getTracks()) pc.addTrack(track, this.localStream);
    await this.answer(pc, msg.sdp, 'MEDIA_RECEIVE_response', msg.transactionID);
  }

  async answerSubscribe(msg) {
    const member = this.members[msg.member.memberID];
    if (!member) return;
    const pc = new RTCPeerConnection();   // the old one is left as it is
    this.pcs.push(pc);
    member.pc = pc;
    member.serial = ++this.serial;
    await this.answer(pc, msg.sdp, 'SDP_response', msg.transactionID);
  }

  // What arrives from each member on its current peer connection.
  async mediaStats() {
    const out = [];
    for (const member of Object.values(this.members)) {
      const row = {name: member.name, memberID: member.memberID, serial: member.serial,
                   framesDecoded: 0, frameWidth: 0, audioPackets: 0, state: null};
      if (member.pc) {
        row.state = member.pc.connectionState;
        const stats = await member.pc.getStats();
        stats.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') {
            row.framesDecoded = s.framesDecoded || 0;
            row.frameWidth = s.frameWidth || 0;
          }
          if (s.type === 'inbound-rtp' && s.kind === 'audio') row.audioPackets = s.packetsReceived || 0;
        });
      }
      out.push(row);
    }
    return out;
  }

  // Which answers carried candidates (ahoy-js's never do).
  answersWithCandidates() {
    return this.sent.filter((m) => m.messageType.endsWith('_response') && m.sdp &&
                            unescape(m.sdp).includes('a=candidate')).length;
  }
}

window.LegacyClient = LegacyClient;
