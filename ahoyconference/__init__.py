"""AhoyConference: a WebRTC conference server (SFU) with a JSON WebSocket API."""

__version__ = "0.1.0"
