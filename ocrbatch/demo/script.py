"""What `ocrbatch demo` does: its settings, its batches, the CLI steps it runs with the exit code
each must give, and the sample documents it writes. How it runs them is `runner.py`'s."""

from __future__ import annotations

import secrets
from pathlib import Path

from ocrbatch.demo import samples

MARKER = "# Written by `ocrbatch demo`"
SECRET = "demo-secret"  # noqa: S105  (the loopback OCR service's key, also written to the demo's config)
# X-OCR-ADMIN-TOKEN of the demo's OCR service (its statistics, for the summary): one per run.
ADMIN_TOKEN = secrets.token_urlsafe(24)
# Three General domains, one per language, because a batch has one language and a General domain
# one batch; they share the OCR service, whose cap is the sum of theirs.
DOMAIN_CAP = 2
DOMAINS = {"ocr-ko": "ko", "ocr-ja": "ja", "ocr-zh-tw": "zh-TW"}
# The key that seals the batches' webhook secrets in their documents: made for each run, mode 0600.
SEALING_KEY_FILE = "secret-key.txt"
DEMO_CONFIG_HEAD = f"""\
{MARKER}: local directories and the {{service}}, no cloud account.
[storage]
control_path = "control"

[security]
secret_key_file = "{SEALING_KEY_FILE}"

[worker]
backoff_initial_s = 0.2
progress_interval_s = 2

[webhook]
# The demo's receiver listens on loopback, which webhooks may reach only when allowed.
allow_networks = ["127.0.0.0/8"]

[logging]
format = "console"
level = "info"
"""
DEMO_DOMAIN = """
[domains.{name}]
kind = "general"
invoke_url = "{url}/general"
secret = "{secret}"
max_concurrent_calls = {cap}
default_language = "{language}"
"""

APPLY_FILE = """\
# Batches declared for `ocrbatch batch apply` (GitOps style): the Korean one as created above,
# and one per other language; the Japanese batch writes Excel workbooks, the Chinese one
# searchable PDFs.
batches:
  - name: 영수증-2026
    domain: ocr-ko
    language: ko
    long_image: true
    input_path: inbox/ko
    result_path: results/ko
    webhook: {{url: "{hook}/ko", secret_file: webhook-secret.txt}}
  - name: 請求書＿日本
    domain: ocr-ja
    language: ja
    file_format: xls
    input_path: inbox/ja
    result_path: results/ja
    webhook: {{url: "{hook}/ja", secret_file: webhook-secret.txt}}
  - name: 發票-臺灣
    domain: ocr-zh-tw
    language: zh-TW
    file_format: pdf
    input_path: inbox/zh-TW
    result_path: results/zh-TW
    webhook: {{url: "{hook}/zh-TW", secret_file: webhook-secret.txt}}
"""

# (arguments, expected exit code, what the step shows); `{hook}` is the webhook receiver's URL.
STEPS: list[tuple[list[str], int, str]] = [
    (["config", "check"], 0, "the effective settings, secrets masked"),
    (
        [
            "batch",
            "create",
            "--name",
            "영수증-2026",
            "--domain",
            "ocr-ko",
            "--language",
            "ko",
            "--long-image",
            "--input",
            "inbox/ko",
            "--result",
            "results/ko",
            "--webhook-url",
            "{hook}/ko",
            "--webhook-secret-file",
            "webhook-secret.txt",
        ],
        0,
        "a General OCR batch for long receipts too, posting results to a webhook",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "second-korean",
            "--domain",
            "ocr-ko",
            "--input",
            "inbox/other",
            "--result",
            "results/other",
        ],
        2,
        "refused: only one batch per General domain",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "nested",
            "--domain",
            "ocr-ja",
            "--input",
            "inbox/ja",
            "--result",
            "inbox/ja/results",
        ],
        2,
        "refused: the result path lies inside the input path",
    ),
    (
        [
            "batch",
            "create",
            "--name",
            "bad name!",
            "--domain",
            "ocr-ja",
            "--input",
            "inbox/ja",
            "--result",
            "results/ja",
        ],
        2,
        "refused: space and '!' are not allowed in names",
    ),
    (["batch", "list", "--search", "영수"], 0, "search by name"),
    (
        ["batch", "apply", "-f", "batches.yaml", "--dry-run"],
        0,
        "what applying the declared batches would change",
    ),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply: a Japanese and a Chinese batch are added"),
    (["batch", "apply", "-f", "batches.yaml"], 0, "apply again: nothing changes (idempotent)"),
    (["run", "--once"], 0, "the worker: every input becomes a result or a failure record"),
    (["run", "--once"], 0, "again: everything is done, so no API call is made"),
    (["batch", "list"], 0, "the batches after the run"),
    (
        ["export", "영수증-2026", "--lines", "--include-failed", "-o", "results/영수증-2026.csv"],
        0,
        "one table of the Korean batch: a row per recognised line, failed items with their reason",
    ),
]


def demo_config(url: str, use_engine: bool) -> str:
    service = "local OCR engine (Tesseract)" if use_engine else "CLOVA emulator"
    domains = "".join(
        DEMO_DOMAIN.format(name=name, url=url, secret=SECRET, cap=DOMAIN_CAP, language=language)
        for name, language in DOMAINS.items()
    )
    return DEMO_CONFIG_HEAD.format(service=service) + domains


def apply_file(hook_url: str) -> str:
    """The `batch apply` file, its webhooks at the demo receiver `hook_url`."""
    return APPLY_FILE.format(hook=hook_url)


def write_samples(inbox: Path) -> int:
    """The sample documents, one folder per batch; returns how many files were written."""
    korean, japanese, chinese = inbox / "ko", inbox / "ja", inbox / "zh-TW"
    text = samples.SAMPLE_TEXT
    files: dict[Path, bytes] = {
        korean / "invoice-ko.png": samples.encode(samples.text_page(text["ko"], "ko"), "PNG"),
        korean / "invoice-en.jpg": samples.encode(samples.text_page(text["en"], "en"), "JPEG"),
        korean / "price-table.png": samples.encode(samples.table_page(), "PNG"),
        korean / "contract-12-pages.pdf": samples.contract_pdf(12),
        korean / "long-receipt.png": samples.encode(samples.long_receipt(), "PNG"),
        korean / "broken.jpg": b"\xff\xd8\xff\xe0 not really a JPEG",
        korean / "logo.gif": b"GIF89a",
        japanese / "seikyusho.png": samples.encode(samples.text_page(text["ja"], "ja"), "PNG"),
        chinese / "fapiao.png": samples.encode(samples.text_page(text["zh-TW"], "zh-TW"), "PNG"),
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return len(files)
