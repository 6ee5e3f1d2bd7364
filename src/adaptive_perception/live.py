"""A live Foxglove WebSocket server for the node's topics (foxglove-sdk; ROS-free).

Each topic becomes a channel with its ros2msg schema and CDR encoding, so Foxglove decodes the same bytes
the ROS graph carries. Localhost by default; `pip install 'adaptive_perception[foxglove]'`."""
from __future__ import annotations

from adaptive_perception.errors import ConfigError
from adaptive_perception.recording import message_definition

DEFAULT_PORT = 8765


class LiveServer:
    """A Foxglove server of its own (own context, so several can run in one process)."""

    def __init__(self, store, host: str = "127.0.0.1", port: int = DEFAULT_PORT, name: str = "adaptive_perception"):
        try:
            import foxglove
        except ImportError as exc:
            raise ConfigError(f"the live Foxglove server needs foxglove-sdk ({exc}); pip install "
                              "'adaptive_perception[foxglove]'") from None
        self._foxglove, self._store = foxglove, store
        self._context = foxglove.Context()
        self._channels: dict[str, object] = {}
        self.server = foxglove.start_server(name=name, host=host, port=port, context=self._context)
        self.port = self.server.port

    def advertise(self, topic: str, msgtype: str) -> None:
        """Offer a topic to clients before its first message, so they can subscribe in time."""
        if topic not in self._channels:
            schema = self._foxglove.Schema(name=msgtype, encoding="ros2msg",
                                           data=message_definition(self._store, msgtype).encode())
            self._channels[topic] = self._foxglove.Channel(topic, schema=schema, message_encoding="cdr",
                                                           context=self._context)

    def log(self, topic: str, msgtype: str, cdr: bytes, stamp_ns: int) -> None:
        self.advertise(topic, msgtype)
        self._channels[topic].log(bytes(cdr), log_time=stamp_ns)

    def close(self) -> None:
        self.server.stop()
