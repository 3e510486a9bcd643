"""The console's parts without a server: both catalogs have every key and every placeholder, the
language a browser gets, sessions and CSRF tokens (expiry on an injected clock), and the forms'
translation to the same batch input the CLI and the API give the store."""

from __future__ import annotations

import hashlib
import re
import string
from pathlib import Path
from typing import get_args

import pytest
from fixtures.api import DOMAINS
from fixtures.clock import FakeClock
from pydantic import SecretStr

from ocrbatch.batches.spec import Batch, BatchStatus
from ocrbatch.console.forms import LANGUAGES, BatchForm, batch_input, domain_info
from ocrbatch.console.i18n import EN, KO, choose_lang, translator
from ocrbatch.console.pages.batches import FLASH_MESSAGES
from ocrbatch.console.sessions import Sessions

TEMPLATES = Path(__file__).parent.parent / "ocrbatch" / "console" / "templates"


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalogs_have_the_same_keys_and_placeholders() -> None:
    """Every key is in both languages with the same placeholders, and every key the templates
    use literally is in the catalogs."""
    assert set(EN) == set(KO)
    for key in EN:
        assert placeholders(EN[key]) == placeholders(KO[key]), key
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"""c\.t\(["']([a-z_.]+)["']""", template.read_text()))
        used |= set(re.findall(r"""\bt\(["']([a-z_.]+)["']""", template.read_text()))
    assert used, "no translated text found in the templates"
    built = {key for key in used if key.endswith((".", "_"))}  # completed in the template
    assert built == {"status.", "form.", "form.lang.", "batch.msg_"}
    assert used - built - set(EN) == set()
    completions = {
        "status.": [*get_args(BatchStatus), "broken"],
        "form.": ["general", "template"],
        "form.lang.": LANGUAGES,
        "batch.msg_": FLASH_MESSAGES,
    }
    for prefix, endings in completions.items():
        assert {prefix + ending for ending in endings} <= set(EN), prefix


@pytest.mark.parametrize(
    ("cookie", "accept_language", "expected"),
    [
        (None, None, "en"),
        (None, "ko-KR,ko;q=0.9,en-US;q=0.8", "ko"),
        (None, "en-US,en;q=0.9,ko;q=0.8", "en"),
        (None, "ja,ko;q=0.5", "ko"),
        (None, "ko;q=0.2,en;q=0.3", "en"),
        (None, "ko;q=bad", "en"),
        ("en", "ko", "en"),
        ("ko", "en", "ko"),
        ("fr", "ko", "ko"),
    ],
)
def test_language_choice(cookie: str | None, accept_language: str | None, expected: str) -> None:
    """The switch's cookie wins; else Korean when the browser ranks it above English."""
    assert choose_lang(cookie, accept_language) == expected


def test_translation_fills_placeholders_and_shows_unknown_keys() -> None:
    """A key's text gets its values (even one named `key`); an unknown key shows as itself."""
    t = translator("en")
    assert t("failure.title", key="a.png") == "Failure of a.png"
    assert t("no.such.key") == "no.such.key"
    assert translator("ko")("list.create") == "배치 생성"


def test_sessions_expire_and_end_at_logout() -> None:
    """A session cookie opens for its TTL only, is bound to the token it was made with, and is
    forgotten at logout; CSRF tokens belong to one session."""
    clock = FakeClock()
    sessions = Sessions(SecretStr("token-a"), ttl_s=60, clock=clock)
    cookie = sessions.open()
    session_id = sessions.session_id(cookie)
    assert session_id is not None
    assert sessions.token_matches(" token-a\n")
    assert not sessions.token_matches("token-b")
    assert sessions.csrf_ok(session_id, sessions.csrf_token(session_id))
    other = sessions.session_id(sessions.open())
    assert other is not None
    assert not sessions.csrf_ok(other, sessions.csrf_token(session_id))
    assert not sessions.csrf_ok(session_id, None)
    assert Sessions(SecretStr("token-b"), ttl_s=60, clock=clock).session_id(cookie) is None
    assert sessions.session_id("not-a-cookie") is None
    clock.now_s += 61
    assert sessions.session_id(cookie) is None
    clock.now_s -= 61
    sessions.forget(cookie)
    assert sessions.session_id(cookie) is None


def batch(**fields: object) -> Batch:
    base: dict[str, object] = {
        "id": "abcdef0123456789",
        "name": "receipts",
        "domain": "gen",
        "input_path": "s3://data/in",
        "result_path": "s3://data/out",
        "created_at": "2026-12-01T00:00:00Z",
        "updated_at": "2026-12-01T00:00:00Z",
    }
    return Batch.model_validate({**base, **fields})


def test_the_form_sends_only_its_domains_kind_of_options() -> None:
    """A General form sends language, tables and long images; a Template form sends template ids;
    checkboxes absent are false; without the webhook box, the webhook is removed."""
    posted = {
        "name": " receipts ",
        "domain": "gen",
        "language": "ja",
        "long_image": "on",
        "template_ids": "1",
        "input_path": "s3://data/in",
        "result_path": "s3://data/out",
        "file_format": "xls",
    }
    body, unreadable = batch_input(posted, DOMAINS)
    assert unreadable == []
    assert body == {
        "name": "receipts",
        "domain": "gen",
        "file_format": "xls",
        "input_path": "s3://data/in",
        "result_path": "s3://data/out",
        "language": "ja",
        "table_extraction": False,
        "long_image": True,
        "webhook": None,
    }
    body, unreadable = batch_input({**posted, "domain": "tpl", "template_ids": "12, 7 8"}, DOMAINS)
    assert body["template_ids"] == [12, 7, 8]
    assert "language" not in body
    _, unreadable = batch_input({**posted, "domain": "tpl", "template_ids": "12, x"}, DOMAINS)
    assert unreadable == [("template_ids", "must be whole numbers separated by commas")]


def test_editing_keeps_a_masked_webhook_url_and_an_empty_secret() -> None:
    """On edit, the webhook URL as shown (credentials masked) and an empty secret mean "keep";
    a new URL or secret is sent."""
    current = batch(webhook={"url": "https://user:pw@hooks.example/x", "secret": "s" * 20})
    shown = BatchForm.of(current).values
    assert "pw" not in shown["webhook_url"]
    assert shown["has_secret"] is True
    posted = {
        "name": "receipts",
        "domain": "gen",
        "input_path": "s3://data/in",
        "result_path": "s3://data/out",
        "webhook_enabled": "on",
        "webhook_url": shown["webhook_url"],
        "webhook_secret": "",
    }
    body, _ = batch_input(posted, DOMAINS, editing=current)
    assert body["webhook"] == {"locations_only": False}
    body, _ = batch_input(
        {**posted, "webhook_url": "https://new.example/", "webhook_secret": "n" * 20},
        DOMAINS,
        editing=current,
    )
    assert body["webhook"] == {"locations_only": False, "url": "https://new.example/", "secret": "n" * 20}


def test_refusals_go_beside_their_inputs() -> None:
    """Violations name the rule's field; the form puts each beside its input (webhook.url beside
    the URL input), and the others above the form."""
    form = BatchForm.blank(DOMAINS)
    form.refuse([("name", "is required"), ("webhook.url", "must be https"), ("batch", "too many batches")])
    assert form.errors == {"name": ["is required"], "webhook_url": ["must be https"]}
    assert form.general_errors == ["too many batches"]


def test_domain_information_column() -> None:
    """The list's Domain information: language, tables, file format and long images for General
    batches; template ids and file format for Template ones."""
    assert domain_info(batch(language="ko", table_extraction=True), DOMAINS["gen"]) == [
        ("info.language", "ko"),
        ("info.tables", "info.on"),
        ("info.file_format", "json"),
        ("info.long_image", "info.off"),
    ]
    assert domain_info(batch(domain="tpl", template_ids=[3, 4]), DOMAINS["tpl"]) == [
        ("info.templates", "3, 4"),
        ("info.file_format", "json"),
    ]


def test_the_vendored_htmx_is_the_pinned_release() -> None:
    """The package's htmx is the release `make vendor-htmx` pins (version and digest), with its
    licence beside it."""
    static = TEMPLATES.parent / "static"
    makefile = (TEMPLATES.parents[2] / "Makefile").read_text()
    version = re.search(r"^HTMX_VERSION := (\S+)$", makefile, re.MULTILINE)
    digest = re.search(r"^HTMX_SHA256 := ([0-9a-f]{64})$", makefile, re.MULTILINE)
    assert version is not None
    assert digest is not None
    script = (static / "htmx.min.js").read_bytes()
    assert hashlib.sha256(script).hexdigest() == digest.group(1)
    assert f'version:"{version.group(1)}"'.encode() in script
    assert (static / "htmx.LICENSE").read_text().startswith("Zero-Clause BSD")
