"""
A conference client in a process of its own, for tests that kill it
(C{tests.test_vanish}): it joins a room over WebSocket and then either
publishes a moving picture and a tone with a real aiortc peer
(L{tests.mediaclients.Publisher}) or subscribes to a named member's media
(L{tests.mediaclients.Subscriber}); it reports on stdout, one JSON object a
line, and runs until it is killed.

    python -m tests.peer_process ws://127.0.0.1:PORT/ ROOM NAME --publish [--tag N]
    python -m tests.peer_process ws://127.0.0.1:PORT/ ROOM NAME --subscribe-to NAME

Reports: C{{"event": "joined", "memberID": ...}}, C{{"event": "connected"}}
(its peer connection is up), and for a subscriber C{{"event": "frames",
"count": n}} every half second.  Media stays on 127.0.0.1 (docs/architecture.md, Tests),
or on C{--host-address} inside a namespace of L{tests.netbed}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def report(**event) -> None:
    """One line on stdout."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def watchConnected(pc) -> None:
    while pc.connectionState != "connected":
        await asyncio.sleep(0.05)
    report(event="connected")


async def publish(client, tag: int) -> None:
    from tests.mediaclients import Publisher

    publisher = Publisher(tag=tag)
    await publisher.publishVia(client)
    await watchConnected(publisher.pc)
    await asyncio.get_running_loop().create_future()  # until killed


async def subscribe(client, joined: dict, name: str) -> None:
    from tests.mediaclients import Subscriber

    target = next((m for m in joined["members"] if m["name"] == name), None)
    while target is None or not target["video"]["available"]:
        indication = await client.expect(timeout=120)
        member = indication.get("member", {})
        if indication["messageType"] in ("CONFERENCE_JOIN_indication", "MEDIA_indication") \
                and member.get("name") == name:
            target = {**member, **{k: indication[k] for k in ("audio", "video") if k in indication}}
            if "video" not in target:
                target["video"] = member.get("video", {"available": False})
    subscriber = Subscriber()
    await subscriber.subscribeVia(client, target["memberID"])
    asyncio.ensure_future(watchConnected(subscriber.pc))
    while True:
        report(event="frames", count=len(subscriber.frames))
        await asyncio.sleep(0.5)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("name")
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--tag", type=int, default=1)
    parser.add_argument("--subscribe-to")
    parser.add_argument("--host-address", default="127.0.0.1",
                        help="gather ICE candidates on this address (tests.netbed)")
    args = parser.parse_args(argv)

    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [args.host_address]
    from ahoyconference.client import ProtocolClient

    client = await ProtocolClient.connect(args.url, timeout=60)
    joined = await client.join(args.room, args.name)
    report(event="joined", memberID=joined["memberID"])
    if args.publish:
        await publish(client, args.tag)
    else:
        await subscribe(client, joined, args.subscribe_to)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
