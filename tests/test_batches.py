"""The console's batch rules, table-driven: names, options per domain kind, paths, uniqueness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ocrbatch.batches.spec import Batch, BatchSpec, check_batch, parse_spec, resolve_defaults
from ocrbatch.errors import BatchRuleViolation
from ocrbatch.locations import Location
from ocrbatch.settings import DomainSettings

DOMAINS = {
    "gen": DomainSettings(
        kind="general", invoke_url="http://ocr/general", secret="s1", table_extraction=True
    ),
    "gen-notables": DomainSettings(kind="general", invoke_url="http://ocr/general", secret="s2"),
    "tpl": DomainSettings(kind="template", invoke_url="http://ocr/infer", secret="s3"),
}
CONTROL = Location.parse("s3://control-bucket/ocrbatch")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "receipts",
        "domain": "gen",
        "input_path": "s3://data/in",
        "result_path": "s3://data/out",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def batch(batch_id: str = "aaaaaaaa00000001", **overrides: Any) -> Batch:
    spec = BatchSpec.model_validate(spec_data(**overrides))
    if spec.domain in DOMAINS:
        spec = resolve_defaults(spec, DOMAINS[spec.domain])
    return Batch.model_validate({**spec.model_dump(), "id": batch_id, "created_at": NOW, "updated_at": NOW})


def template_batch(batch_id: str = "bbbbbbbb00000001", **overrides: Any) -> Batch:
    fields: dict[str, Any] = {"name": "forms", "domain": "tpl", "template_ids": [7]}
    fields.update(overrides)
    return batch(batch_id, **fields)


def violations(batches: list[Batch]) -> list[tuple[str, str]]:
    """The refusal of the last batch, checked against the ones before it."""
    *others, candidate = batches
    with pytest.raises(BatchRuleViolation) as caught:
        check_batch(candidate, others, domains=DOMAINS, control=CONTROL)
    return caught.value.violations


VALID_NAMES = [
    "영수증",  # Korean
    "ㄱㄴㄷ",  # Hangul jamo
    "Receipts",  # English
    "发票東京",  # Chinese
    "請求書",  # Japanese kanji
    "ひらがな",  # Hiragana
    "カタカナー",  # Katakana with the long vowel mark
    "ｶﾀｶﾅ",  # half-width Katakana
    "20261123",  # digits
    "a&b",
    "a＆b",
    "a。b",
    "a｡b",
    "a_b",
    "a＿b",
    "a-b",
    "a－b",
    "a×b",
    "々",
    "영수증_2026-東京×々",
    "a" * 50,
]

INVALID_NAMES = [
    "",
    "a" * 51,
    "영" * 51,
    "a b",
    "a!b",
    "a/b",
    "a.b",
    "a@b",
    "a\tb",
    "emoji😀",
    "a+b",
    "(a)",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_are_accepted(name: str) -> None:
    """Names from every allowed script and each allowed special character are accepted."""
    assert parse_spec(spec_data(name=name)).name == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused_naming_the_rule(name: str) -> None:
    """Empty, over-long and disallowed-character names are refused, naming the field and the rule."""
    with pytest.raises(BatchRuleViolation) as caught:
        parse_spec(spec_data(name=name))
    assert caught.value.violations[0][0] == "name"
    assert "1-50 characters" in caught.value.violations[0][1]


def test_decomposed_hangul_is_normalised() -> None:
    """A name typed as decomposed jamo (as macOS produces) is stored in composed form."""
    decomposed = "\u1112\u1161\u11ab"  # 한 as three jamo
    assert parse_spec(spec_data(name=decomposed)).name == "한"


@pytest.mark.parametrize(
    ("first", "second"),
    [("Receipts", "receipts"), ("a&b", "a＆b"), ("a-b", "a－b"), ("영수증", "영수증")],
)
def test_duplicate_names_are_refused(first: str, second: str) -> None:
    """Names are unique regardless of case and half-/full-width forms."""
    problems = violations(
        [
            template_batch(name=first),
            template_batch("bbbbbbbb00000002", name=second, input_path="s3://data/b"),
        ]
    )
    assert ("name", "is already used by another batch (batch " + repr(first) + ")") in problems


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"webhook": {"url": "ftp://hooks/x"}}, "webhook.url", "must be an http:// or https:// URL"),
        ({"webhook": {"url": "hooks.example.com"}}, "webhook.url", "must be an http:// or https:// URL"),
        ({"template_ids": [0]}, "template_ids", "template ids must be positive integers"),
        ({"template_ids": [3, 3]}, "template_ids", "template ids must not repeat"),
        ({"language": "en"}, "language", "Input should be 'ko', 'ja' or 'zh-TW'"),
        ({"file_format": "csv"}, "file_format", "Input should be 'json', 'xls' or 'pdf'"),
        (
            {"input_path": "gs://bucket/x"},
            "input_path",
            "must be s3://bucket/prefix or a local directory path",
        ),
        ({"result_path": "s3://B/x"}, "result_path", "S3 bucket name 'B' is invalid"),
        ({"colour": "red"}, "colour", "is not a batch field"),
        ({"domain": None}, "domain", "is required"),
    ],
)
def test_field_rules(overrides: dict[str, Any], field: str, rule: str) -> None:
    """Each field rule refuses with the field's name and the rule."""
    with pytest.raises(BatchRuleViolation) as caught:
        parse_spec(spec_data(**overrides))
    assert any(got_field == field and rule in got_rule for got_field, got_rule in caught.value.violations)


def test_http_and_https_webhooks_are_accepted() -> None:
    """Webhook URLs may be http or https, with a path and query."""
    for url in ("http://127.0.0.1:8081/hook", "https://hooks.example.com/ocr?team=a"):
        assert parse_spec(spec_data(webhook={"url": url})).webhook is not None


@pytest.mark.parametrize(
    ("candidate", "field", "rule"),
    [
        (batch(domain="nope"), "domain", "no OCR domain named 'nope' is configured (configured: gen,"),
        (template_batch(language="ko"), "language", "only for general domains"),
        (template_batch(table_extraction=True), "table_extraction", "only for general domains"),
        (template_batch(long_image=False), "long_image", "only for general domains"),
        (template_batch(template_ids=None), "template_ids", "at least one template id is required"),
        (template_batch(template_ids=[]), "template_ids", "at least one template id is required"),
        (batch(template_ids=[1]), "template_ids", "only for template domains"),
        (
            batch(domain="gen-notables", table_extraction=True),
            "table_extraction",
            "domain 'gen-notables' does not have table extraction enabled",
        ),
        (batch(result_path="s3://data/in/results"), "result_path", "must not lie inside the input path"),
        (batch(result_path="s3://data/in"), "result_path", "must not lie inside the input path"),
        (batch(input_path="s3://data/out/in"), "result_path", "must not lie inside the input path"),
        (batch(input_path="s3://control-bucket/"), "input_path", "must not overlap the control path"),
        (
            batch(result_path="s3://control-bucket/ocrbatch/r"),
            "result_path",
            "must not overlap the control path",
        ),
    ],
)
def test_single_batch_rules(candidate: Batch, field: str, rule: str) -> None:
    """A batch with options its domain kind does not take, or bad paths, is refused naming field and rule."""
    problems = violations([candidate])
    assert any(got_field == field and rule in got_rule for got_field, got_rule in problems), problems


def test_local_result_inside_local_input_is_refused(tmp_path: Any) -> None:
    """Path containment also holds for local directories, relative to where they resolve."""
    problems = violations([batch(input_path=str(tmp_path), result_path=str(tmp_path / "out"))])
    assert problems[0][0] == "result_path"


@pytest.mark.parametrize(
    ("second", "field", "rule"),
    [
        (
            batch("aaaaaaaa00000002", name="other", input_path="s3://data/in2", result_path="s3://data/out2"),
            "domain",
            "only one batch per General domain is allowed",
        ),
        (
            template_batch("bbbbbbbb00000002", name="forms2"),
            "batch",
            "another batch has the same settings and paths",
        ),
        (
            template_batch("bbbbbbbb00000002", name="forms2", result_path="s3://data/out-b"),
            "input_path",
            "another batch reads the same input path with the same domain",
        ),
        (
            template_batch(
                "bbbbbbbb00000002", name="forms2", input_path="s3://data/x", result_path="s3://data/in/r"
            ),
            "result_path",
            "must not lie inside another batch's input path",
        ),
        (
            template_batch(
                "bbbbbbbb00000002", name="forms2", input_path="s3://data/out/x", result_path="s3://results/x"
            ),
            "input_path",
            "must not contain or lie inside another batch's result path",
        ),
        (
            template_batch(
                "bbbbbbbb00000002", name="forms2", input_path="s3://data/x", result_path="s3://data/out"
            ),
            "result_path",
            "must not overlap another batch's result path",
        ),
    ],
)
def test_rules_between_batches(second: Batch, field: str, rule: str) -> None:
    """A batch that clashes with an existing one is refused, naming the other batch."""
    first = (
        template_batch(input_path="s3://data/in")
        if second.domain == "tpl"
        else batch(input_path="s3://data/in")
    )
    problems = violations([first, second])
    assert any(got_field == field and rule in got_rule for got_field, got_rule in problems), problems


def test_several_template_batches_may_share_a_domain() -> None:
    """Only General domains are limited to one batch; Template domains take several."""
    catalog = [
        template_batch(),
        template_batch(
            "bbbbbbbb00000002", name="forms2", input_path="s3://data/in2", result_path="s3://data/o2"
        ),
        batch(input_path="s3://data/in3", result_path="s3://data/o3"),
    ]
    for index, candidate in enumerate(catalog):
        check_batch(candidate, catalog[:index], domains=DOMAINS, control=CONTROL)


def test_every_violation_is_reported_at_once() -> None:
    """A batch breaking several rules gets all of them in one refusal."""
    problems = violations([template_batch(language="ko", template_ids=None, result_path="s3://data/in/x")])
    assert {field for field, _ in problems} == {"language", "template_ids", "result_path"}


def test_general_defaults_come_from_the_domain() -> None:
    """A General batch without a language takes the domain's default; options default to off."""
    domain = DomainSettings(kind="general", invoke_url="http://x", secret="s", default_language="ja")
    resolved = resolve_defaults(parse_spec(spec_data()), domain)
    assert (resolved.language, resolved.table_extraction, resolved.long_image) == ("ja", False, False)
    plain = DomainSettings(kind="general", invoke_url="http://x", secret="s")
    assert resolve_defaults(parse_spec(spec_data()), plain).language == "ko"


def test_webhook_secret_is_masked_except_for_the_store() -> None:
    """The webhook secret is masked in ordinary JSON and kept only when the store asks for it."""
    spec = parse_spec(spec_data(webhook={"url": "http://h/x", "secret": "whsec-123456"}))
    assert "whsec-123456" not in spec.model_dump_json()
    assert "whsec-123456" in spec.model_dump_json(context={"reveal_secrets": True})


def test_a_stored_batch_that_no_longer_passes_does_not_block_others() -> None:
    """Only the candidate is judged: an old batch whose domain was removed blocks nothing else."""
    orphan = template_batch(
        domain="removed-domain", name="old", input_path="s3://data/old", result_path="s3://old-results/x"
    )
    check_batch(template_batch(), [orphan], domains=DOMAINS, control=CONTROL)


def test_a_batch_is_not_compared_with_its_own_previous_version() -> None:
    """Editing a batch checks it against the others, not against the version it replaces."""
    current = batch()
    edited = batch(name="renamed")
    check_batch(edited, [current], domains=DOMAINS, control=CONTROL)
