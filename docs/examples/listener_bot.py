"""
A bot on the protocol client (docs/client.md): it joins a conference,
answers "!who" in the chat with the names of the others, and receives the media of
every member who shares, counting the video frames it decodes.

    python docs/examples/listener_bot.py ws://127.0.0.1:8080/ team bot

tests/test_client.py runs it against a real server.
"""

from __future__ import annotations

import asyncio
import sys

from ahoyconference.client import ProtocolClient


class ListenerBot:
    """Joins, chats back, subscribes to whoever shares."""

    def __init__(self, client: ProtocolClient):
        self.client = client
        self.members: dict[str, str] = {}       # memberID -> name
        self.frames: dict[str, int] = {}        # memberID -> video frames decoded
        self.subscriptions = {}
        self.tasks: list[asyncio.Task] = []

    async def run(self, conferenceID: str, name: str) -> None:
        """Join, then handle what the server sends until the connection closes."""
        joined = await self.client.join(conferenceID, name)
        for member in joined["members"]:
            self.members[member["memberID"]] = member["name"]
            if member["video"]["available"]:
                await self.subscribe(member["memberID"])
        async for message in self.client.events():
            kind = message["messageType"]
            if kind == "CONFERENCE_JOIN_indication":
                self.members[message["member"]["memberID"]] = message["member"]["name"]
            elif kind == "CONFERENCE_LEAVE_indication":
                self.members.pop(message["member"]["memberID"], None)
            elif kind == "MEDIA_indication" and message["video"]["available"]:
                await self.subscribe(message["member"]["memberID"])
            elif kind == "CHAT_MESSAGE_indication" and message["message"]["text"] == "!who":
                await self.client.chat(", ".join(sorted(self.members.values())))

    async def subscribe(self, memberID: str) -> None:
        """Receive a member's media (once) and count its video frames."""
        if memberID in self.subscriptions:
            return
        subscription = await self.client.subscribe(memberID)
        self.subscriptions[memberID] = subscription
        self.tasks.append(asyncio.ensure_future(self.count(subscription)))

    async def count(self, subscription) -> None:
        video = await subscription.track("video", timeout=60)
        while True:
            await video.recv()
            self.frames[subscription.memberID] = self.frames.get(subscription.memberID, 0) + 1

    async def close(self) -> None:
        """Hang up everything."""
        for task in self.tasks:
            task.cancel()
        for subscription in self.subscriptions.values():
            await subscription.close()
        await self.client.close()


async def main(url: str, conferenceID: str, name: str) -> None:
    bot = ListenerBot(await ProtocolClient.connect(url))
    try:
        await bot.run(conferenceID, name)
    finally:
        await bot.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
