"""The twistd plugin: ``twistd ahoyconference``. No logic here (see ahoyconference.tap)."""

from twisted.application.service import ServiceMaker

ahoyconference = ServiceMaker(
    "AhoyConference",
    "ahoyconference.tap",
    "A WebRTC conference server with a JSON WebSocket API.",
    "ahoyconference",
)
