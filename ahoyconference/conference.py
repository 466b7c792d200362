# -*- test-case-name: tests.test_rules -*-
"""
Conferences and their members: state and rules (roles, lock, limits, mute,
chat, time limit), with no I/O.

Indications leave through each member's L{MemberSink} (the session), as JSON
bytes encoded once per fan-out.
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Protocol

from ahoyconference.interfaces import ClientInfo, ConferenceSettings, ProtocolError, Role
from ahoyconference.messages import RawJSON, encode

KINDS = ("audio", "video")


class MemberSink(Protocol):
    """Where a member's messages go: its session."""

    def sendEncoded(self, data: bytes) -> None:
        """Send one frame of already-encoded JSON."""

    def disconnect(self) -> None:
        """Close the connection (after the messages already sent)."""


class Member:
    """
    One participant of one conference.

    @ivar muted: kind → the announced muted state.
    @ivar forced: kind → muted by a moderator (forwarding stopped; only a
        moderator may lift it).
    @ivar available: kind → media of that kind is arriving.
    @ivar sharing: kind → the member asked to share it (C{MEDIA_SHARE_request}).
    @ivar shareEpoch: how many C{MEDIA_indication}s with media available
        went out about this member; a subscriber's session compares it to
        tell whether its client saw one after an offer (protocol.md 4.10).
    """

    def __init__(self, name: str, role: Role, client: ClientInfo, sink: MemberSink,
                 memberID: str | None = None, webrtc: bool = True):
        self.memberID = memberID or secrets.token_hex(32)
        self.name = name
        self.role = role
        self.client = client
        self.sink = sink
        self.webrtc = webrtc
        self.conference: Conference | None = None
        self.muted = {"audio": True, "video": True}
        self.forced = {"audio": False, "video": False}
        self.available = {"audio": False, "video": False}
        self.sharing = {"audio": False, "video": False}
        self.speaking = False
        self.shareEpoch = 0
        self._described: dict[bool, str] = {}
        self._version = 0

    @property
    def moderator(self) -> bool:
        """Is this member a moderator?"""
        return self.role >= Role.MODERATOR

    @property
    def speaker(self) -> bool:
        """May this member send audio and video (speakers and moderators)?"""
        return self.role >= Role.SPEAKER

    def ref(self) -> dict:
        """The short form, C{{name, memberID}}."""
        return {"name": self.name, "memberID": self.memberID}

    def mediaState(self) -> dict:
        """The C{audio} and C{video} objects of indications."""
        return {
            "audio": {"available": self.available["audio"], "muted": self.muted["audio"],
                      "speaking": self.speaking},
            "video": {"available": self.available["video"], "muted": self.muted["video"]},
        }

    def touch(self) -> None:
        """
        The member's C{muted}, C{available} or C{speaking} changed: its
        cached JSON (L{describedJSON}) and its conference's member list are
        made again when next needed.  Everything that changes those calls
        this (conference.py and service.py).
        """
        self._version += 1
        self._described.clear()
        if self.conference is not None:
            self.conference.memberChanged()

    def describedJSON(self, withIP: bool) -> str:
        """
        L{describe} as JSON text, kept until the member's state changes
        (L{touch}): a join into a big room lists every member (protocol.md 1.2).
        """
        text = self._described.get(withIP)
        if text is None:
            text = self._described[withIP] = json.dumps(
                self.describe(withIP), separators=(",", ":"), ensure_ascii=False)
        return text

    def describe(self, withIP: bool) -> dict:
        """The C{member} object of C{CONFERENCE_JOIN_indication} (protocol.md 2.1)."""
        state = self.mediaState()
        out = {
            "name": self.name,
            "memberID": self.memberID,
            "moderator": self.moderator,
            "speaker": self.speaker,
            "webrtc": self.webrtc,
            "audio": state["audio"],
            "video": {"available": state["video"]["available"], "muted": state["video"]["muted"]},
        }
        if withIP:
            out["ip"] = self.client.ip
        return out


def _memberList(members: list[Member], withIP: bool) -> str:
    """The C{members} of a join response, from each member's cached JSON."""
    return "[" + ",".join(m.describedJSON(withIP) for m in members) + "]"


class Conference:
    """
    A conference room: its settings, members, lock and timers.

    @param clock: an L{IReactorTime} for the time limit.
    @param onTimeUp: called with the conference when its time limit ran
        out; the caller kicks the members.
    """

    def __init__(self, settings: ConferenceSettings, clock, maxMembers: int,
                 ipToEveryone: bool = False, onTimeUp=None):
        self.settings = settings
        self.description = settings.description
        self.clock = clock
        self.maxMembers = min(settings.maxMember or maxMembers, maxMembers)
        self.ipToEveryone = ipToEveryone
        self.locked = False
        self.members: dict[str, Member] = {}
        self._deadline: float | None = None
        self._timer = None
        self._onTimeUp = onTimeUp
        self._listed: dict[bool, str] = {}

    @property
    def conferenceID(self) -> str:
        """The conference's ID."""
        return self.settings.conferenceID

    # -- joining and leaving ---------------------------------------------

    def checkJoin(self) -> None:
        """
        @raise ProtocolError: 470 when locked, 486 when full.
        """
        if self.locked:
            raise ProtocolError(470)
        if len(self.members) >= self.maxMembers:
            raise ProtocolError(486)

    def remainingSeconds(self) -> int:
        """-1 without a time limit, else the whole seconds left (at least 1)."""
        if not self.settings.timeLimit:
            return -1
        if self._deadline is None:
            return self.settings.timeLimit
        return max(1, math.ceil(self._deadline - self.clock.seconds()))

    def add(self, member: Member) -> dict:
        """
        Add a member (L{checkJoin} passed) and tell the others.

        @return: the C{CONFERENCE_JOIN_response} fields for the joiner.
        """
        self.checkJoin()
        if self.settings.timeLimit and self._deadline is None:
            self._deadline = self.clock.seconds() + self.settings.timeLimit
            self._timer = self.clock.callLater(self.settings.timeLimit, self._timeUp)
        others = list(self.members.values())
        withIP = self._ipFor(member)
        listed = self._listed.get(withIP)
        if listed is None:
            listed = _memberList(others, withIP)
        member.conference = self
        self.members[member.memberID] = member
        self._fanOutJoin(member, others)
        # the list the next joiner gets: this one's plus the new member
        self._listed = {withIP: (listed[:-1] + ("," if others else "")
                                 + member.describedJSON(withIP) + "]")}
        return {
            "remainingSeconds": self.remainingSeconds(),
            "locked": self.locked,
            "conferenceID": self.conferenceID,
            "conferenceName": self.settings.conferenceName,
            "description": self.description,
            "speakerID": member.memberID,
            "memberID": member.memberID,
            "moderator": member.moderator,
            "speaker": member.speaker,
            "webrtc": member.webrtc,
            "members": RawJSON(listed),
        }

    def memberChanged(self) -> None:
        """A member's state changed (L{Member.touch}): the kept member list goes."""
        self._listed = {}

    def _ipFor(self, recipient: Member) -> bool:
        return self.ipToEveryone or recipient.moderator

    def _fanOutJoin(self, member: Member, others: list[Member]) -> None:
        plain = encode({"messageType": "CONFERENCE_JOIN_indication",
                        "member": member.describe(self.ipToEveryone)})
        withIP = plain if self.ipToEveryone else None
        for other in others:
            if other.role >= Role.MODERATOR:
                if withIP is None:
                    withIP = encode({"messageType": "CONFERENCE_JOIN_indication",
                                     "member": member.describe(True)})
                other.sink.sendEncoded(withIP)
            else:
                other.sink.sendEncoded(plain)

    def remove(self, member: Member) -> bool:
        """
        Remove a member and tell the others (C{CONFERENCE_LEAVE_indication}).

        @return: C{True} if it was a member.
        """
        if self.members.pop(member.memberID, None) is None:
            return False
        member.conference = None
        self._listed = {}
        self.broadcast({
            "messageType": "CONFERENCE_LEAVE_indication",
            "member": {"name": member.name, "memberID": member.memberID,
                       "moderator": member.moderator},
        })
        return True

    def notifyKicked(self, member: Member, timeout: bool = False) -> None:
        """Send the member its C{CONFERENCE_KICK_indication} (protocol.md 2.3)."""
        member.sink.sendEncoded(encode({"messageType": "CONFERENCE_KICK_indication",
                                        "timeout": 1 if timeout else 0}))

    def _timeUp(self) -> None:
        self._timer = None
        self._deadline = None
        if self._onTimeUp is not None:
            self._onTimeUp(self)

    def close(self) -> None:
        """Cancel the timers (the conference is being removed)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- what members do -----------------------------------------------

    def member(self, memberID: str) -> Member:
        """@raise ProtocolError: 404 for an unknown member."""
        found = self.members.get(memberID)
        if found is None:
            raise ProtocolError(404)
        return found

    def broadcast(self, message: dict, exclude: Member | None = None) -> None:
        """Send one message, encoded once, to every member but C{exclude}."""
        data = encode(message)
        for m in list(self.members.values()):
            if m is not exclude:
                m.sink.sendEncoded(data)

    def chat(self, sender: Member, message: dict) -> None:
        """Forward a chat message to every other member (protocol.md 4.7)."""
        self.broadcast({"messageType": "CHAT_MESSAGE_indication", "from": sender.ref(),
                        "message": {"text": message["text"]}}, exclude=sender)

    def setDescription(self, description: str) -> None:
        """Change the description; everyone is told."""
        self.description = description
        self.broadcast({"messageType": "CONFERENCE_DESCRIPTION_indication",
                        "description": description})

    def setLocked(self, locked: bool) -> None:
        """Lock or unlock; everyone is told (protocol.md 4.3)."""
        self.locked = locked
        self.broadcast({"messageType": "CONFERENCE_LOCK_indication", "locked": locked})

    def videoCap(self, requested: int) -> int:
        """The effective video bitrate cap, kbit/s: the request's, at most the room's (4.5)."""
        if self.settings.maxVideoBitrate:
            return min(requested, self.settings.maxVideoBitrate)
        return requested

    def share(self, member: Member, wanted: dict) -> list[str]:
        """
        The member shares (or stops sharing) these kinds (protocol.md 4.5):
        a kind it shares is announced unmuted unless a moderator muted it.

        @param wanted: kind → shared.
        @return: the kinds it no longer shares.
        """
        stopped = []
        for kind in KINDS:
            member.sharing[kind] = wanted[kind]
            if not wanted[kind]:
                stopped.append(kind)
            elif not member.forced[kind]:
                member.muted[kind] = False
        member.touch()
        return stopped

    def mute(self, requester: Member, target: Member, changes: dict) -> list[tuple[str, bool]]:
        """
        Apply a C{MEDIA_MUTE_request} (protocol.md 4.4) and tell everyone.

        A moderator muting another member forces the mute (forwarding stops)
        until a moderator unmutes; the member cannot lift it.

        @param changes: kind → muted.
        @return: the (kind, forwarding enabled) changes for the media engine.
        @raise ProtocolError: 403 when a member tries to lift a moderator's mute.
        """
        byModerator = target is not requester
        forwarding = []
        before = dict(target.muted)
        if not requester.moderator:
            for kind, muted in changes.items():
                if not muted and target.forced[kind]:
                    raise ProtocolError(403, detail=f"{kind} was muted by a moderator")
        for kind, muted in changes.items():
            target.muted[kind] = muted
            if byModerator or target.forced[kind]:
                if target.forced[kind] != muted:
                    target.forced[kind] = muted
                    forwarding.append((kind, not muted))
        flipped = [kind for kind in KINDS if target.muted[kind] != before[kind]]
        target.touch()
        if flipped:
            # protocol.md 4.10: an indication for the new state, then an event per change.
            if target.muted["audio"] and target.speaking:
                target.speaking = False
                target.touch()
            self.announceMedia(target)
            for kind in flipped:
                self.announceEvent(target, f"{kind}_{'mute' if target.muted[kind] else 'unmute'}")
        return forwarding

    def announceMedia(self, member: Member, exclude: Member | None = None) -> None:
        """
        Send everyone (but C{exclude}) a C{MEDIA_indication} with the
        member's state (2.4).  Only for a change of C{available} or C{muted}:
        the original client re-subscribes on each one (protocol.md 4.10).
        """
        message = {"messageType": "MEDIA_indication", "member": member.ref()}
        message.update(member.mediaState())
        if any(member.available.values()):
            member.shareEpoch += 1
        self.broadcast(message, exclude=exclude)

    #: The C{event}s of C{MEDIA_event} (protocol.md 4.10).
    EVENTS = frozenset({"start_speaking", "stop_speaking", "audio_mute", "audio_unmute",
                        "video_mute", "video_unmute"})

    def announceEvent(self, member: Member, event: str) -> None:
        """Send everyone a C{MEDIA_event} about the member (protocol.md 4.10)."""
        assert event in self.EVENTS, event
        self.broadcast({"messageType": "MEDIA_event", "member": member.ref(), "event": event})

    def setSpeaking(self, member: Member, speaking: bool) -> None:
        """The member started or stopped speaking: a C{MEDIA_event}, no indication."""
        if member.speaking == speaking:
            return
        member.speaking = speaking
        member.touch()
        self.announceEvent(member, "start_speaking" if speaking else "stop_speaking")
