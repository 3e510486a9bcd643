"""The `ocrbatch batch` commands, run through the real entry point on a local control directory:
create, list, show, edit, delete and apply, and the refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.cli import CREATE_FORMS, CREATE_RECEIPTS, Cli
from fixtures.sealing import SEALER

from ocrbatch.cli.root import EXIT_BAD_INPUT


def control_files(cli: Cli) -> list[Path]:
    return sorted(path for path in (cli.workdir / "control").rglob("*") if path.is_file())


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
    receipts_id = cli.json("batch", "show", "영수증")["id"]
    document = cli.workdir / "control" / "batches" / f"{receipts_id}.json"
    assert SEALER.open(json.loads(document.read_text())["webhook"]["secret"]) == "whsec-from-file-123"
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


def test_a_broken_document_is_listed_as_broken_and_show_fails_clearly(cli: Cli) -> None:
    """A batch document that is not JSON, beside a good batch: `batch list` shows it as a row with
    its id and status `broken` with the reason, `--json` includes it with "status": "broken", `batch
    show` of it ends with one clear error line (exit 1, no traceback), and `batch delete` removes it."""
    good = cli.json(*CREATE_RECEIPTS)
    (cli.workdir / "control" / "batches" / "0badd0c0000000ff.json").write_text('{"name": "x", "domain":')

    table, _ = cli("batch", "list")
    row = next(line for line in table.splitlines() if "0badd0c0000000ff" in line)
    assert "broken: " in row
    assert "영수증" in table
    listed = {entry["id"]: entry for entry in cli.json("batch", "list")}
    assert listed[good["id"]]["status"] == "available"
    broken = listed["0badd0c0000000ff"]
    assert (broken["status"], broken["key"]) == ("broken", "batches/0badd0c0000000ff.json")
    assert "batch document is not valid (Invalid JSON" in broken["status_reason"]

    _, err = cli("batch", "show", "0badd0c0000000ff", expect=1)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "0badd0c0000000ff.json: batch document is not valid" in last
    assert "fix or delete it" in last
    assert "Traceback" not in err

    out, _ = cli("batch", "delete", "0badd0c0000000ff", "--yes")
    assert out.startswith("deleted the broken batch document ")
    assert [entry["id"] for entry in cli.json("batch", "list")] == [good["id"]]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "bad.yaml",
            'batches:\n  - name: x\n    webhook: {url: "http://h", secret: "whsec_TOPSECRET" [oops\n',
        ),
        (
            "bad.toml",
            '[[batch]]\nname = "x"\nwebhook = { url = "http://h", secret = "whsec_TOPSECRET" oops }\n',
        ),
    ],
)
def test_an_unparsable_apply_file_is_reported_by_position_without_its_text(
    cli: Cli, name: str, text: str
) -> None:
    """A YAML or TOML apply file that does not parse: the error gives the line and column, and
    never the line itself, which may hold a webhook secret (exit 2)."""
    (cli.workdir / name).write_text(text, encoding="utf-8")
    out, err = cli("batch", "apply", "-f", name, expect=EXIT_BAD_INPUT)
    assert f"{name} cannot be parsed" in err
    assert "line 3, column 58" in err
    assert "TOPSECRET" not in out + err


def test_control_files_are_readable_by_their_owner_only(cli: Cli) -> None:
    """Batch documents hold webhook secrets: every file the batch commands write in a local control
    directory (documents, leases, sidecars) has mode 0600."""
    (cli.workdir / "whsec.txt").write_text("whsec-from-file-123\n")
    cli(*CREATE_RECEIPTS, "--webhook-url", "http://127.0.0.1:8081/hook", "--webhook-secret-file", "whsec.txt")
    files = control_files(cli)
    assert any(path.parent.name == "batches" for path in files)
    assert {path.relative_to(cli.workdir).as_posix(): oct(path.stat().st_mode & 0o777) for path in files} == {
        path.relative_to(cli.workdir).as_posix(): oct(0o600) for path in files
    }


def test_credentials_in_a_webhook_url_are_shown_masked_and_kept_for_delivery(cli: Cli) -> None:
    """A webhook URL with a user and password: `batch show` and `batch list` (human and JSON) show
    it as `https://***@host/...`; the batch document keeps it whole but sealed, for the deliveries."""
    url = "https://hook-user:hook-PASSWORD@hooks.example/in"
    cli(*CREATE_RECEIPTS, "--webhook-url", url)
    shown = cli.json("batch", "show", "영수증")
    assert shown["webhook"]["url"] == "https://***@hooks.example/in"
    listed, _ = cli("batch", "list")
    as_json, _ = cli("batch", "list", "--json")
    assert "hook-PASSWORD" not in listed + as_json
    [document] = [path for path in control_files(cli) if path.parent == cli.workdir / "control" / "batches"]
    stored = document.read_text(encoding="utf-8")
    assert "hook-PASSWORD" not in stored
    assert SEALER.open(json.loads(stored)["webhook"]["url"]) == url
