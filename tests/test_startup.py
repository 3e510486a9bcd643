"""Start-up imports only what a command uses: `ocrbatch run` on local directories with storage
coordination loads neither the S3 client, Redis, the API and console, the emulator, the engine and
the demo, nor the Excel writer and Fernet until a batch needs them. (Its wall time is measured by
`make bench`, group startup, not here.)"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from fixtures.waits import within

from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.settings import load_settings
from ocrbatch.storage.factory import StorageFactory

# Run in a fresh interpreter: the command as the console entry point runs it, then the modules.
_PROBE = """
import json, sys
from ocrbatch.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
NOT_LOADED = (
    "aioboto3",
    "botocore",
    "redis",
    "cryptography.fernet",
    "xlsxwriter",
    "fpdf",
    "jinja2",
    "ocrbatch.console",
    "ocrbatch.service.api",
    "ocrbatch.service.serving",
    "ocrbatch.service.sqs",
    "ocrbatch.storage.s3",
    "ocrbatch.coordination.redis",
    "ocrbatch.emulator",
    "ocrbatch.engine",
    "ocrbatch.demo",
    "ocrbatch.cli.batches",
    "ocrbatch.worker.result_pdf",
    "ocrbatch.exports",
)


def _within(module: str) -> bool:
    """Whether `module` is one of `NOT_LOADED` or inside one of them."""
    return any(module == name or module.startswith(name + ".") for name in NOT_LOADED)


async def _modules_after(config: Path, *args: str) -> tuple[int, set[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE,
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await within(process.communicate(), 60, f"`ocrbatch {' '.join(args)}` did not end")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def _write_config(tmp_path: Path) -> Path:
    config = tmp_path / "ocrbatch.toml"
    config.write_text(
        f"""
[storage]
control_path = "{tmp_path / "control"}"
[domains.receipts]
kind = "general"
invoke_url = "http://127.0.0.1:9/general"
secret = "a-secret-for-start-up"
""",
        encoding="utf-8",
    )
    return config


async def test_run_once_on_local_directories_loads_only_what_it_uses(tmp_path: Path) -> None:
    """`ocrbatch run --once` over an empty local batch exits 0 without importing any of
    `NOT_LOADED`; `ocrbatch serve --help` does import the API (so the probe sees what it should)."""
    config = _write_config(tmp_path)
    settings = load_settings(config)
    (tmp_path / "in").mkdir()
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        spec = {"name": "empty", "domain": "receipts", "input_path": str(tmp_path / "in")}
        await store.create(parse_spec({**spec, "result_path": str(tmp_path / "out")}))

    code, modules = await _modules_after(config, "run", "--once")
    assert code == 0
    loaded = sorted(name for name in modules if _within(name))
    assert loaded == [], f"`run --once` imported {loaded}"
    assert "ocrbatch.worker.worker" in modules

    code, modules = await _modules_after(config, "serve", "--help")
    assert code == 0
    assert "ocrbatch.service.serving" in modules
