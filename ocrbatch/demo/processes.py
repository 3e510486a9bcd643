"""The processes the demo starts (the OCR service, serve) and how it stops them."""

from __future__ import annotations

import subprocess
from typing import Any, Final

STOP_TIMEOUT_S: Final = 10


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`; nothing when it has already exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
