"""
A real SIP phone for the tests: Debian's C{baresip}, headless, in a temporary
config directory.  Its microphone is a WAV file with a known tone (the
C{aufile} module); what it hears is written to WAV files by the C{sndfile}
module; keys and commands go to its C{cons} console over UDP on loopback.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import glob
import math
import os
import random
import shutil
import socket
import subprocess
import tempfile
import wave
from array import array

BARESIP = shutil.which("baresip")
MODULES = "/usr/lib/baresip/modules"


def freePort(kind=socket.SOCK_DGRAM) -> int:
    """A free loopback port (for baresip's SIP and console sockets)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def writeTone(path: str, frequency: float, seconds: float = 30.0, rate: int = 8000) -> None:
    """A mono s16 WAV of a sine tone."""
    samples = array("h", (int(12000 * math.sin(2 * math.pi * frequency * i / rate))
                          for i in range(int(seconds * rate))))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def readWav(path: str) -> tuple[array, int]:
    """
    Mono s16 samples and the rate of a WAV file (what baresip heard).  The
    file may still be written to, its sizes not filled in yet: the chunks
    are found by name and the data read to the end.
    """
    with open(path, "rb") as f:
        data = f.read()
    fmt = data.find(b"fmt ")
    start = data.find(b"data")
    if fmt < 0 or start < 0:
        return array("h"), 8000
    channels = int.from_bytes(data[fmt + 10:fmt + 12], "little")
    rate = int.from_bytes(data[fmt + 12:fmt + 16], "little")
    body = data[start + 8:]
    samples = array("h")
    samples.frombytes(body[:len(body) - len(body) % 2])
    if channels > 1:
        samples = samples[::channels]
    return samples, rate


class Baresip:
    """
    One baresip process.

    @ivar output: everything it printed so far.
    """

    def __init__(self, name: str = "Alice Phone", user: str = "alice", tone: float = 700.0,
                 transport: str = "udp", password: str | None = None, codec: str = "PCMU"):
        self.dir = tempfile.mkdtemp(prefix="ahoy-baresip-")
        self.sipPort = freePort(socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)
        self.consPort = freePort()
        self.tonePath = os.path.join(self.dir, "tone.wav")
        rate = 48000 if codec == "opus" else 8000
        writeTone(self.tonePath, tone, rate=rate)
        codecs = "opus/48000/2" if codec == "opus" else codec
        rtpBase = random.randrange(30000, 39000, 2)
        config = f"""
poll_method epoll
net_interface 127.0.0.1
sip_listen 127.0.0.1:{self.sipPort}
call_local_timeout 120
audio_player aufile,{self.dir}/nothing.wav
audio_source aufile,{self.tonePath}
audio_alert aufile,{self.dir}/nothing.wav
ausrc_srate {rate}
auplay_srate {rate}
ausrc_channels 1
auplay_channels 1
audio_level no
rtp_ports {rtpBase}-{rtpBase + 40}
rtcp_mux no
jitter_buffer_delay 1-5
module_path {MODULES}
module cons.so
module g711.so
module opus.so
module aufile.so
module sndfile.so
module_tmp account.so
module_app menu.so
cons_listen 127.0.0.1:{self.consPort}
snd_path {self.dir}
"""
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write(config)
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            auth = f"auth_pass={password};" if password is not None else ""
            f.write(f'"{name}" <sip:{user}@127.0.0.1;transport={transport}>;regint=0;{auth}'
                    f'audio_codecs={codecs}\n')
        self.output = ""
        self.process = None
        self._reader = None

    async def start(self) -> Baresip:
        """Start the process and wait until it is ready."""
        self.process = await asyncio.create_subprocess_exec(
            BARESIP, "-f", self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self._reader = asyncio.ensure_future(self._read())
        await self.waitOutput("baresip is ready", timeout=15)
        return self

    async def _read(self) -> None:
        while True:
            line = await self.process.stdout.readline()
            if not line:
                return
            self.output += line.decode("utf-8", "replace")

    async def waitOutput(self, text: str, timeout: float = 20.0, start: int = 0) -> None:
        """Wait until it printed C{text} (after offset C{start})."""
        deadline = asyncio.get_event_loop().time() + timeout
        while text not in self.output[start:]:
            if asyncio.get_event_loop().time() > deadline:
                raise AssertionError(f"baresip did not print {text!r}; it printed:\n"
                                     f"{self.output[-3000:]}")
            if self.process.returncode is not None:
                raise AssertionError(f"baresip exited; it printed:\n{self.output[-3000:]}")
            await asyncio.sleep(0.05)

    def command(self, text: str) -> None:
        """Send keys or a long command (C{/dial ...}) to its console."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(text.encode(), ("127.0.0.1", self.consPort))

    async def keys(self, keys: str, gap: float = 0.3) -> None:
        """Press keys during a call (sent as RFC 4733 events)."""
        for key in keys:
            self.command(key)
            await asyncio.sleep(gap)

    def dial(self, uri: str) -> None:
        """Call C{uri}."""
        self.command(f"/dial {uri}\n")

    def hangup(self) -> None:
        """Hang up the call."""
        self.command("/hangup\n")

    def heard(self) -> tuple[array, int]:
        """What it heard: the samples of its decoder dump, and their rate."""
        files = sorted(glob.glob(os.path.join(self.dir, "dump-*-dec.wav")))
        if not files:
            return array("h"), 8000
        return readWav(files[-1])

    async def stop(self) -> None:
        """Quit and remove the temporary directory."""
        if self.process is not None and self.process.returncode is None:
            self.command("/quit\n")
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await self._reader
        shutil.rmtree(self.dir, ignore_errors=True)
