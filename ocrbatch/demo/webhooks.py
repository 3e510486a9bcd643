"""The demo's webhook receiver: takes chunks on loopback, checks signatures, saves each payload.

A standard-library HTTP server in a background thread, because the demo itself is a plain
synchronous script that runs the CLI step by step. Each `POST /{name}` is verified with the
Standard Webhooks signature (`webhook_signing.verify`, refused with 401 when it does not match)
and saved as `{folder}/{name}/{sequence:04}-{chunk id}.json`; a resent chunk overwrites its file,
which is how receivers de-duplicate.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from ocrbatch.webhooks.signing import InvalidSignature, verify

_NAME_RE = re.compile(r"^/([A-Za-z0-9_-]{1,64})$")
MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SavedChunk:
    """One chunk the receiver accepted."""

    path: Path
    batch_name: str
    chunk_id: str
    items: list[dict[str, Any]]


class WebhookReceiver:
    """`with WebhookReceiver(folder, secret) as receiver:` POST to `receiver.url + "/name"`."""

    def __init__(self, folder: Path, secret: str) -> None:
        self.folder = folder
        self.secret = secret
        self.url = ""
        self.refused = 0
        self._chunks: dict[Path, SavedChunk] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def chunks(self) -> list[SavedChunk]:
        with self._lock:
            return [self._chunks[path] for path in sorted(self._chunks)]

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                status = receiver.handle(self.path, dict(self.headers.items()), self._body())
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"refused")

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(min(length, MAX_BODY_BYTES))

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo prints its own summary of what arrived."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon `stop()` is noticed
            name="demo-webhooks",
            daemon=True,
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Verify, parse and save one delivery; the HTTP status to answer."""
        match = _NAME_RE.fullmatch(path)
        if match is None:
            return 404
        try:
            verify(self.secret, headers, body, now_s=int(time.time()))
        except InvalidSignature:
            with self._lock:
                self.refused += 1
            return 401
        try:
            payload = json.loads(body)
            sequence, chunk_id = int(payload["sequence"]), str(payload["chunkId"])
        except (ValueError, TypeError, KeyError):
            with self._lock:
                self.refused += 1
            return 400
        folder = self.folder / match.group(1)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sequence:04}-{re.sub(r'[^A-Za-z0-9_-]', '_', chunk_id)}.json"
        target.write_text(json.dumps(payload, ensure_ascii=False, indent=2), encoding="utf-8")
        items = list(payload.get("items", []))
        chunk = SavedChunk(target, str(payload.get("batchName", "")), chunk_id, items)
        with self._lock:
            self._chunks[target] = chunk
        return 200
