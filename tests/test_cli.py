"""The `ocrbatch` command line, run through its real entry point on local and S3 storage."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from botocore.config import Config

from ocrbatch.cli.root import EXIT_BAD_INPUT, EXIT_FAILURE, main

CONFIG = """
[storage]
control_path = "control"

[domains.receipts]
kind = "general"
invoke_url = "http://127.0.0.1:9/general"
secret = "{ocr_secret}"
table_extraction = true

[domains.forms]
kind = "template"
invoke_url = "http://127.0.0.1:9/infer"
secret = "template-secret-value"

[logging]
format = "json"
"""
OCR_SECRET = "ocr-SECRET-7f3a91"


class Cli:
    """Runs `ocrbatch --config <tmp>/ocrbatch.toml ...` in-process and captures its output."""

    def __init__(self, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.workdir = workdir
        self.capsys = capsys
        self.outputs: list[str] = []

    def __call__(self, *args: str, expect: int = 0) -> tuple[str, str]:
        try:
            main(["--config", str(self.workdir / "ocrbatch.toml"), *args])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        out, err = self.capsys.readouterr()
        self.outputs += [out, err]
        assert code == expect, f"exit {code}, expected {expect}\n{out}\n{err}"
        return out, err

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json")[0])


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    (tmp_path / "ocrbatch.toml").write_text(CONFIG.format(ocr_secret=OCR_SECRET))
    monkeypatch.chdir(tmp_path)
    yield Cli(tmp_path, capsys)
    structlog.reset_defaults()


def control_files(cli: Cli) -> list[Path]:
    return sorted(path for path in (cli.workdir / "control").rglob("*") if path.is_file())


CREATE_RECEIPTS = (
    "batch",
    "create",
    "--name",
    "영수증",
    "--domain",
    "receipts",
    "--input",
    "in/r",
    "--result",
    "out/r",
)
CREATE_FORMS = (
    "batch",
    "create",
    "--name",
    "forms",
    "--domain",
    "forms",
    "--template-id",
    "3",
    "--template-id",
    "4",
    "--file-format",
    "xls",
    "--input",
    "in/f",
    "--result",
    "out/f",
)


def test_create_list_show_edit_delete(cli: Cli) -> None:
    """The batch commands work end to end: human output by default, JSON on request."""
    out, _ = cli(*CREATE_RECEIPTS, "--table-extraction", "--webhook-url", "http://127.0.0.1:8081/hook")
    assert "created batch '영수증'" in out
    forms = cli.json(*CREATE_FORMS)
    assert (forms["template_ids"], forms["file_format"]) == ([3, 4], "xls")
    assert forms["input_path"] == str(cli.workdir / "in" / "f")

    table, _ = cli("batch", "list")
    assert "영수증" in table
    assert "forms" in table
    assert "templates 3,4" in table
    assert [batch["name"] for batch in cli.json("batch", "list", "--search", "FOR")] == ["forms"]
    assert cli("batch", "list", "--search", "zzz")[0] == "no batches match 'zzz'\n"

    shown = cli.json("batch", "show", "영수증")
    assert (shown["language"], shown["table_extraction"], shown["status"]) == ("ko", True, "available")
    edited = cli.json("batch", "edit", shown["id"], "--pause", "--language", "ja")
    assert (edited["status"], edited["language"], edited["table_extraction"]) == ("paused", "ja", True)
    assert cli.json("batch", "edit", "영수증", "--no-webhook")["webhook"] is None

    out, _ = cli("batch", "delete", "forms", "--yes")
    assert "its results were kept" in out
    assert [batch["name"] for batch in cli.json("batch", "list")] == ["영수증"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (
                "batch",
                "create",
                "--name",
                "bad name",
                "--domain",
                "forms",
                "--template-id",
                "1",
                "--input",
                "a",
                "--result",
                "b",
            ),
            "error: name: must be 1-50 characters",
        ),
        (
            ("batch", "create", "--name", "x", "--domain", "nope", "--input", "a", "--result", "b"),
            "error: domain: no OCR domain named 'nope' is configured (configured: forms, receipts)",
        ),
        (
            ("batch", "create", "--name", "x", "--domain", "forms", "--input", "a", "--result", "b"),
            "error: template_ids: at least one template id is required",
        ),
        (
            (
                "batch",
                "create",
                "--name",
                "x",
                "--domain",
                "forms",
                "--template-id",
                "1",
                "--language",
                "ko",
                "--input",
                "a",
                "--result",
                "b",
            ),
            "error: language: only for general domains",
        ),
        (
            ("batch", "create", "--name", "x", "--domain", "receipts", "--input", "a", "--result", "a/out"),
            "error: result_path: must not lie inside the input path",
        ),
        (
            (
                "batch",
                "create",
                "--name",
                "x",
                "--domain",
                "receipts",
                "--input",
                "a",
                "--result",
                "b",
                "--webhook-url",
                "ftp://x",
            ),
            "error: webhook.url: must be an http:// or https:// URL",
        ),
        (
            ("batch", "create", "--domain", "receipts", "--input", "a", "--result", "b"),
            "error: name: is required",
        ),
        (
            (
                "batch",
                "create",
                "--name",
                "x",
                "--domain",
                "receipts",
                "--input",
                "s3://X/y",
                "--result",
                "b",
            ),
            "error: input_path: S3 bucket name 'X' is invalid",
        ),
        (("batch", "show", "missing"), "error: no batch has the id or name 'missing'"),
        (("batch", "edit", "missing", "--pause"), "error: no batch has the id or name 'missing'"),
        (("batch", "edit", "영수증"), "Error: nothing to change"),
        (("batch", "delete", "영수증"), "Error: refusing to delete without --yes"),
        (
            ("batch", "create", "--name", "x", "--file-format", "csv"),
            "Error: Invalid value for '--file-format'",
        ),
        (("batch", "frobnicate"), "Error: No such command 'frobnicate'"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2_and_writes_nothing(
    cli: Cli, args: tuple[str, ...], message: str
) -> None:
    """Every refusal exits 2 with one line naming the problem, and no batch document changes."""
    cli(*CREATE_RECEIPTS)
    before = {path: path.read_bytes() for path in control_files(cli)}
    _, err = cli(*args, expect=EXIT_BAD_INPUT)
    assert message in err
    assert len([line for line in err.splitlines() if line.startswith(("error:", "Error:"))]) == 1
    assert {path: path.read_bytes() for path in control_files(cli)} == before


def test_second_general_batch_and_duplicate_name_are_refused(cli: Cli) -> None:
    """The console's 'one batch per General domain' and unique-name rules hold at the CLI."""
    cli(*CREATE_RECEIPTS)
    _, err = cli(
        "batch",
        "create",
        "--name",
        "other",
        "--domain",
        "receipts",
        "--input",
        "x",
        "--result",
        "y",
        expect=EXIT_BAD_INPUT,
    )
    assert "domain: only one batch per General domain is allowed (batch '영수증')" in err
    _, err = cli(
        "batch",
        "create",
        "--name",
        "영수증",
        "--domain",
        "forms",
        "--template-id",
        "1",
        "--input",
        "x",
        "--result",
        "y",
        expect=EXIT_BAD_INPUT,
    )
    assert "name: is already used by another batch" in err


def test_apply_toml_and_yaml(cli: Cli) -> None:
    """apply reads TOML [[batch]] or YAML batches:, is idempotent, and refuses a bad file whole."""
    (cli.workdir / "batches.toml").write_text(
        '[[batch]]\nname = "forms"\ndomain = "forms"\ntemplate_ids = [1]\n'
        'input_path = "in/f"\nresult_path = "out/f"\n'
    )
    assert cli.json("batch", "apply", "-f", "batches.toml") == [
        {"action": "create", "name": "forms", "batch_id": cli.json("batch", "show", "forms")["id"]}
    ]
    assert [c["action"] for c in cli.json("batch", "apply", "-f", "batches.toml")] == ["unchanged"]
    (cli.workdir / "batches.yaml").write_text(
        "batches:\n"
        "  - {name: forms, domain: forms, template_ids: [1, 2], input_path: in/f, result_path: out/f}\n"
        "  - {name: 영수증, domain: receipts, input_path: in/r, result_path: out/r,\n"
        "     webhook: {url: 'http://127.0.0.1:1/h', secret_file: whsec.txt}}\n"
    )
    (cli.workdir / "whsec.txt").write_text("whsec-from-file-123\n")
    out, _ = cli("batch", "apply", "-f", "batches.yaml")
    assert "update" in out
    assert "create" in out
    assert (
        "whsec-from-file-123"
        in (cli.workdir / "control")
        .joinpath("batches", cli.json("batch", "show", "영수증")["id"] + ".json")
        .read_text()
    )
    before = {path: path.read_bytes() for path in control_files(cli)}
    (cli.workdir / "bad.yaml").write_text(
        "batches:\n  - {name: x, domain: receipts, input_path: q, result_path: w}\n"
    )
    _, err = cli("batch", "apply", "-f", "bad.yaml", expect=EXIT_BAD_INPUT)
    assert "batch 'x': domain: only one batch per General domain" in err
    (cli.workdir / "broken.yaml").write_text("batches: [\n")
    _, err = cli("batch", "apply", "-f", "broken.yaml", expect=EXIT_BAD_INPUT)
    assert "broken.yaml cannot be parsed" in err
    (cli.workdir / "wrong.yaml").write_text("batch: []\n")
    _, err = cli("batch", "apply", "-f", "wrong.yaml", expect=EXIT_BAD_INPUT)
    assert "expected a 'batches:' list" in err
    assert {path: path.read_bytes() for path in control_files(cli)} == before


def test_config_check_prints_masked_settings(cli: Cli) -> None:
    """config check prints the effective settings as JSON with every secret masked."""
    out, err = cli("config", "check")
    settings = json.loads(out)
    assert settings["domains"]["receipts"]["secret"] == "**********"
    assert OCR_SECRET not in out + err
    assert "settings are valid" in err


def test_bad_config_exits_2_naming_the_key(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid setting stops every command with one message naming the key and the rule."""
    monkeypatch.setenv("OCRBATCH_DOMAINS__RECEIPTS__MAX_CONCURRENT_CALLS", "-1")
    _, err = cli("batch", "list", expect=EXIT_BAD_INPUT)
    assert err.startswith("error: invalid setting: domains.receipts.max_concurrent_calls:")


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def test_batches_on_s3_storage(cli: Cli, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With control_path on S3, the same commands keep one document per batch in the bucket."""
    bucket = f"ctl-{uuid.uuid4().hex[:12]}"
    s3_client(moto_server).create_bucket(Bucket=bucket)
    monkeypatch.setenv("OCRBATCH_STORAGE__ENDPOINT_URL", moto_server)
    monkeypatch.setenv("OCRBATCH_STORAGE__ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("OCRBATCH_STORAGE__ADDRESSING_STYLE", "path")
    monkeypatch.setenv("OCRBATCH_STORAGE__CONTROL_PATH", f"s3://{bucket}/ocrbatch")
    created = cli.json(*CREATE_FORMS)
    listed = s3_client(moto_server).list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == [f"ocrbatch/batches/{created['id']}.json"]
    assert [batch["name"] for batch in cli.json("batch", "list")] == ["forms"]


def test_unreachable_storage_is_an_operational_error(
    cli: Cli, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing bucket is reported as such (exit 1), never as an empty list."""
    monkeypatch.setenv("OCRBATCH_STORAGE__ENDPOINT_URL", moto_server)
    monkeypatch.setenv("OCRBATCH_STORAGE__ADDRESSING_STYLE", "path")
    monkeypatch.setenv("OCRBATCH_STORAGE__ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("OCRBATCH_STORAGE__CONTROL_PATH", "s3://no-such-bucket-here/ocrbatch")
    out, err = cli("batch", "list", expect=EXIT_FAILURE)
    assert out == ""
    assert err.startswith("error: s3://no-such-bucket-here/ocrbatch/")
    assert "does not exist" in err


def test_a_known_secret_appears_nowhere(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets from settings, files and webhooks never reach stdout, stderr or logs, errors included."""
    secrets = {
        "ocr": OCR_SECRET,
        "storage": "storage-SECRET-88c2",
        "token": "api-SECRET-token-5d1e",
        "webhook": "whsec-SECRET-31b7",
    }
    (cli.workdir / "storage-secret").write_text(secrets["storage"] + "\n")
    (cli.workdir / "webhook-secret").write_text(secrets["webhook"] + "\n")
    monkeypatch.setenv("OCRBATCH_STORAGE__ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY_FILE", str(cli.workdir / "storage-secret"))
    monkeypatch.setenv("OCRBATCH_API__TOKEN", secrets["token"])
    monkeypatch.setenv("OCRBATCH_LOGGING__LEVEL", "debug")
    cli("config", "check")
    cli(*CREATE_RECEIPTS, "--webhook-url", "http://h/x", "--webhook-secret-file", "webhook-secret")
    cli("batch", "show", "영수증")
    cli("batch", "list", "--json")
    cli("batch", "edit", "영수증", "--pause")
    cli(
        "batch",
        "create",
        "--name",
        "x",
        "--domain",
        "receipts",
        "--input",
        "a",
        "--result",
        "b",
        "--webhook-url",
        "http://h/y",
        "--webhook-secret-file",
        "webhook-secret",
        expect=EXIT_BAD_INPUT,
    )
    # An unreachable S3 endpoint: the storage error must not carry the credentials either.
    monkeypatch.setenv("OCRBATCH_STORAGE__ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OCRBATCH_STORAGE__CONTROL_PATH", "s3://some-bucket/ctl")
    monkeypatch.setenv("OCRBATCH_STORAGE__CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("OCRBATCH_STORAGE__MAX_ATTEMPTS", "1")
    cli("batch", "list", expect=EXIT_FAILURE)
    # A secret put where a number belongs: the validation error must not echo it.
    monkeypatch.setenv("OCRBATCH_WORKER__MAX_ATTEMPTS", secrets["token"])
    cli("batch", "list", expect=EXIT_BAD_INPUT)
    everything = "".join(cli.outputs)
    assert "batch.created" in everything  # the logs were captured too
    for name, secret in secrets.items():
        assert secret not in everything, f"the {name} secret leaked"
