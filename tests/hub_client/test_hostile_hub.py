"""A Hub that ignores Range headers or sends endless bodies costs the client bounded memory.

``loradex serve`` behaves, so the misbehaving Hub here is a real HTTP server on loopback that
does what a broken or hostile one would.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hub_client.client import HEADER_PROBE_BYTES, MAX_TEXT_BYTES, HubClient
from loradex.errors import InvalidAdapter

HEADER = json.dumps(
    {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
).encode()
SAFETENSORS_PREFIX = struct.pack("<Q", len(HEADER)) + HEADER + b"\0" * 4


class _Endless(BaseHTTPRequestHandler):
    """Answers every file with 200 and no Content-Length, ignoring Range, forever."""

    sent: list[int] = []  # noqa: RUF012 (shared with the test on purpose)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.end_headers()
        sent = 0
        body = SAFETENSORS_PREFIX if self.path.endswith(".safetensors") else b""
        try:
            self.wfile.write(body)
            sent += len(body)
            while sent < 1 << 30:  # 1 GiB, unless the client hangs up first
                self.wfile.write(b"x" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.sent.append(sent)

    def log_message(self, *args: object) -> None:
        pass


def _bytes_sent() -> int:
    """What the server wrote before it noticed the client had gone (it notices on a write)."""
    for _ in range(200):
        if _Endless.sent:
            return _Endless.sent[0]
        time.sleep(0.05)
    raise AssertionError("the server is still sending: the client never hung up")


@pytest.fixture
def endless_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_header_read_stops_at_what_it_asked_for(endless_hub: str) -> None:
    _Endless.sent.clear()
    client = HubClient(endless_hub, timeout=30)
    size = len(SAFETENSORS_PREFIX)  # what the listing says; the server sends far more
    header = client.fetch_safetensors_header("a/b", "adapter_model.safetensors", "main", size)
    assert header["t"]["shape"] == [1]
    # the server got to write a little past the probe before the client hung up, not 1 GiB
    assert _bytes_sent() < 64 * HEADER_PROBE_BYTES


def test_an_endless_text_file_is_refused_not_held_in_memory(endless_hub: str) -> None:
    _Endless.sent.clear()
    client = HubClient(endless_hub, timeout=30)
    with pytest.raises(InvalidAdapter, match=f"a/b/README.md: larger than {MAX_TEXT_BYTES}"):
        client.fetch_text("a/b", "README.md", "main")
    assert _bytes_sent() < 2 * MAX_TEXT_BYTES
