"""
A user-space network cable between two network namespaces, with loss, delay,
jitter and a rate limit that can be changed while it runs (the kernel of the
machines this project is tested on has no C{netem} and no C{tbf}:
docs/operations.md and L{tests.netbed} explain the bed).

The cable makes one TAP device in its own network namespace (the "home" end,
where it is started with C{ip netns exec}) and one in another namespace (the
"router" end, entered with setns(2) after the first is open), and moves
Ethernet frames between their file descriptors.  Each direction ("up": home
to router, "down": router to home) drops, delays and paces frames on its own,
so NAT, ICE, DTLS and RTCP see real missing and late packets.  Frames are
never reordered (a later frame leaves no earlier than the one before it).

Usage (as root)::

    ip netns exec HOME python tests/cable.py --home-tap eth0 \\
        --router-netns ROUTER --router-tap lan0 --control /path/cable.sock

The TAP devices exist while the process runs (they are not persistent) and
vanish when it exits.  Once both are open it prints C{ready} on stdout.

The control socket (a UNIX stream socket) takes one JSON object per line and
answers each with one JSON line::

    {"set": {"up": {"loss": 0.03, "delay": 0.04, "jitter": 0.01, "rate": 2000000}}}
    {"set": {"both": {"loss": 0}}}
    {"stats": true}

C{loss} is a probability, C{delay} and C{jitter} are seconds (each frame gets
delay + uniform(-jitter, jitter), at least 0), C{rate} is bits per second (0:
unlimited) and C{queue} the most bytes waiting for the rate limit (beyond it
frames are dropped, as a router's queue would).  Every answer carries the
settings and the counters of both directions: frames and bytes in, frames
sent, dropped by loss, dropped by a full queue, and write errors (the TAP
device is down: a pulled cable).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import heapq
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
DIRECTIONS = ("up", "down")
SETTINGS = {"loss": 0.0, "delay": 0.0, "jitter": 0.0, "rate": 0, "queue": 1_000_000}


def setns(path: str) -> None:
    """Move this thread into the network namespace at C{path} (/run/netns/NAME)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)


def openTap(name: str) -> int:
    """Make (and open) a TAP device of this name in the current namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Direction:
    """One direction of the cable: its settings, its queue's state and its counters."""

    def __init__(self, name: str, rng: random.Random):
        self.name = name
        self.rng = rng
        self.settings = dict(SETTINGS)
        self.busyUntil = 0.0     # when the rate limiter's "wire" is free again
        self.lastRelease = 0.0   # no reordering
        self.queued = 0          # bytes waiting for the wire or the delay
        self.counters = {"frames_in": 0, "bytes_in": 0, "sent": 0, "lost": 0,
                         "queue_drops": 0, "write_errors": 0}

    def configure(self, changes: dict) -> None:
        for key, value in changes.items():
            if key not in SETTINGS:
                raise ValueError(f"unknown setting {key!r} (known: {', '.join(SETTINGS)})")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a number >= 0, not {value!r}")
            if key == "loss" and value > 1:
                raise ValueError("loss is a probability (0 to 1)")
        self.settings.update(changes)

    def admit(self, size: int, now: float) -> float | None:
        """When a frame of C{size} bytes arriving now leaves, or C{None}: dropped."""
        s = self.settings
        self.counters["frames_in"] += 1
        self.counters["bytes_in"] += size
        if s["loss"] and self.rng.random() < s["loss"]:
            self.counters["lost"] += 1
            return None
        if self.queued + size > s["queue"]:
            self.counters["queue_drops"] += 1
            return None
        leave = now
        if s["rate"]:
            start = max(now, self.busyUntil)
            self.busyUntil = start + size * 8 / s["rate"]
            leave = self.busyUntil
        wobble = self.rng.uniform(-s["jitter"], s["jitter"]) if s["jitter"] else 0.0
        leave = max(leave + max(0.0, s["delay"] + wobble), self.lastRelease)
        self.lastRelease = leave
        self.queued += size
        return leave


class Cable:
    """The two TAP file descriptors, the frames in flight and the control socket."""

    def __init__(self, homeFd: int, routerFd: int, control: str, seed: int | None):
        rng = random.Random(seed)
        self.fds = {"up": routerFd, "down": homeFd}        # where each direction writes
        self.readers = {homeFd: "up", routerFd: "down"}     # what each fd's frames are
        self.directions = {name: Direction(name, rng) for name in DIRECTIONS}
        self.heap: list = []
        self.order = 0
        self.selector = selectors.DefaultSelector()
        for fd in self.readers:
            self.selector.register(fd, selectors.EVENT_READ, "tap")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(control)
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.buffers: dict[socket.socket, bytes] = {}

    def readTap(self, fd: int) -> None:
        direction = self.directions[self.readers[fd]]
        for _ in range(64):
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:  # the device went down under us
                return
            leave = direction.admit(len(frame), time.monotonic())
            if leave is not None:
                self.order += 1
                heapq.heappush(self.heap, (leave, self.order, direction.name, frame))

    def release(self) -> float | None:
        """Write every frame that is due; the seconds until the next one."""
        now = time.monotonic()
        while self.heap and self.heap[0][0] <= now:
            _, _, name, frame = heapq.heappop(self.heap)
            direction = self.directions[name]
            direction.queued -= len(frame)
            try:
                os.write(self.fds[name], frame)
                direction.counters["sent"] += 1
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EAGAIN, errno.ENETDOWN, errno.EINVAL):
                    raise
                direction.counters["write_errors"] += 1
        return max(0.0, self.heap[0][0] - now) if self.heap else None

    def answer(self, request: dict) -> dict:
        try:
            if "set" in request:
                changes = request["set"]
                if not isinstance(changes, dict):
                    raise ValueError("set takes an object")
                for name, settings in changes.items():
                    if name not in (*DIRECTIONS, "both"):
                        raise ValueError(f"unknown direction {name!r} (up, down, both)")
                    if not isinstance(settings, dict):
                        raise ValueError(f"{name} takes an object")
                    for d in (DIRECTIONS if name == "both" else (name,)):
                        self.directions[d].configure(settings)
            elif not request.get("stats"):
                raise ValueError("send {\"set\": {...}} or {\"stats\": true}")
        except ValueError as e:
            return {"error": str(e)}
        return {d.name: {"settings": d.settings, **d.counters} for d in self.directions.values()}

    def control(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn)
            self.buffers.pop(conn, None)
            conn.close()
            return
        buffered = self.buffers.get(conn, b"") + data
        *lines, rest = buffered.split(b"\n")
        self.buffers[conn] = rest
        for line in lines:
            try:
                request = json.loads(line)
                reply = self.answer(request) if isinstance(request, dict) else {
                    "error": "one JSON object per line"}
            except ValueError as e:
                reply = {"error": f"not JSON: {e}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def run(self) -> None:
        while True:
            timeout = self.release()
            for key, _ in self.selector.select(timeout):
                if key.data == "tap":
                    self.readTap(key.fd)
                elif key.data == "accept":
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(True)
                    self.selector.register(conn, selectors.EVENT_READ, "control")
                else:
                    self.control(key.fileobj)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home-tap", required=True, help="the TAP device made here")
    parser.add_argument("--router-netns", required=True, help="the other namespace's name")
    parser.add_argument("--router-tap", required=True, help="the TAP device made there")
    parser.add_argument("--control", required=True, help="the control socket's path")
    parser.add_argument("--seed", type=int, help="seed of the loss and jitter dice")
    args = parser.parse_args(argv)
    homeFd = openTap(args.home_tap)
    setns(f"/run/netns/{args.router_netns}")
    routerFd = openTap(args.router_tap)
    cable = Cable(homeFd, routerFd, args.control, args.seed)

    def stop(signum, frame):
        raise SystemExit(0)  # interrupts select(); the TAP devices go with the process

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        cable.run()
    finally:
        try:
            os.unlink(args.control)
        except OSError:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
