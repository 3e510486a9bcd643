"""Webhook secrets sealed at rest: on each storage profile the batch document never holds a
webhook's secret or its URL's password in clear, the store opens them with the configured keys
(rotation included), refuses to store one without a key, reads a document it cannot open as
broken, and still reads documents written in clear before sealing. Also the `[security]` setting
and the refusals at the API and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from fixtures.api import StartApi
from fixtures.api import spec as api_spec
from fixtures.cli import CONFIG, CREATE_RECEIPTS, OCR_SECRET, Cli
from fixtures.sealing import OTHER_KEY, SEALER, SECRET_KEY

from ocrbatch.batches.broken import BrokenBatchDocument
from ocrbatch.batches.sealing import Sealer
from ocrbatch.batches.spec import BatchSpec, parse_spec
from ocrbatch.batches.store import BatchStore
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.errors import BatchRuleViolation, ConfigError
from ocrbatch.locations import Location
from ocrbatch.logs import configure_logging
from ocrbatch.settings import DomainSettings, load_settings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.local import LocalStorage

DOMAINS = {"tpl": DomainSettings(kind="template", invoke_url="http://ocr/infer", secret="s2")}
HOOK_SECRET = "whsec-SEALED-4711"
URL_PASSWORD = "url-PASSWORD-0815"
HOOK_URL = f"https://hook-user:{URL_PASSWORD}@hooks.example/in"
KEY_MESSAGE = "set security.secret_key (OCRBATCH_SECURITY__SECRET_KEY or security.secret_key_file)"


def spec(name: str = "forms", **webhook: Any) -> BatchSpec:
    data: dict[str, Any] = {
        "name": name,
        "domain": "tpl",
        "template_ids": [1],
        "input_path": f"s3://data/{name}/in",
        "result_path": f"s3://data/{name}/out",
    }
    if webhook:
        data["webhook"] = webhook
    return parse_spec(data)


@pytest.fixture
def control(profile_storage: Storage) -> Location:
    return profile_storage.location


def make_store(coordination: Coordination, control: Location, *keys: str) -> BatchStore:
    """A store whose sealer holds `keys` (the first seals); no key, no sealer."""
    return BatchStore(coordination, control=control, domains=DOMAINS, sealer=Sealer(keys) if keys else None)


async def raw(coordination: Coordination, batch_id: str) -> bytes:
    document = await coordination.read(f"batches/{batch_id}.json")
    assert document is not None, f"no document for batch {batch_id}"
    return document.data


async def test_the_document_never_holds_the_secret_or_the_url_password_in_clear(
    coordination: Coordination, control: Location
) -> None:
    """Created, edited and given a new status, the stored bytes never contain the webhook secret
    or the URL's password: both are `{"fernet": ...}` tokens, and the store reads them back whole."""
    store = make_store(coordination, control, SECRET_KEY)
    created = await store.create(spec(url=HOOK_URL, secret=HOOK_SECRET))
    await store.update(created.batch.id, {"file_format": "xls"})
    await store.set_status(created.batch.id, "running")
    data = await raw(coordination, created.batch.id)
    for clear in (HOOK_SECRET, URL_PASSWORD, "hook-user"):
        assert clear.encode() not in data
    webhook = json.loads(data)["webhook"]
    assert set(webhook["secret"]) == set(webhook["url"]) == {"fernet"}
    assert SEALER.open(webhook["secret"]) == HOOK_SECRET
    assert SEALER.open(webhook["url"]) == HOOK_URL
    loaded = (await store.get(created.batch.id)).batch
    assert loaded.webhook is not None
    assert loaded.webhook.secret is not None
    assert (loaded.webhook.url, loaded.webhook.secret.get_secret_value()) == (HOOK_URL, HOOK_SECRET)
    assert (loaded.file_format, loaded.status) == ("xls", "running")


async def test_a_url_without_credentials_stays_readable(
    coordination: Coordination, control: Location
) -> None:
    """Only a URL with credentials is sealed: a plain webhook URL stays a string in the document,
    while the secret beside it is sealed."""
    store = make_store(coordination, control, SECRET_KEY)
    created = await store.create(spec(url="https://hooks.example/in", secret=HOOK_SECRET))
    webhook = json.loads(await raw(coordination, created.batch.id))["webhook"]
    assert webhook["url"] == "https://hooks.example/in"
    assert set(webhook["secret"]) == {"fernet"}


async def test_without_a_key_a_secret_is_refused_and_nothing_is_written(
    coordination: Coordination, control: Location
) -> None:
    """With no key configured, creating or applying a batch whose webhook has a secret (or a URL
    with credentials) is a `BatchRuleViolation` naming the field and the setting to set, and no
    document is written; batches without secrets need no key."""
    store = make_store(coordination, control)
    with pytest.raises(BatchRuleViolation) as refused:
        await store.create(spec(url=HOOK_URL, secret=HOOK_SECRET))
    assert [field for field, _ in refused.value.violations] == ["webhook.secret", "webhook.url"]
    assert all(KEY_MESSAGE in rule for _, rule in refused.value.violations)
    assert HOOK_SECRET not in str(refused.value)
    assert URL_PASSWORD not in str(refused.value)
    with pytest.raises(BatchRuleViolation, match=r"batch 'hooked': webhook\.secret: cannot be stored"):
        await store.apply([spec("plain"), spec("hooked", url="https://hooks.example/in", secret=HOOK_SECRET)])
    assert [key async for key in coordination.keys("batches/")] == []
    plain = await store.create(spec(url="https://hooks.example/in"))
    assert (await store.get(plain.batch.id)).batch.webhook is not None


async def test_a_document_sealed_with_another_key_is_broken_with_the_reason(
    coordination: Coordination, control: Location
) -> None:
    """A document sealed with a key the store does not hold (or read with no key at all) is a
    broken document, whose reason says the key does not open it: listings skip it, reading it raises
    `BrokenBatchDocument`, and the other batches are still read."""
    sealed = await make_store(coordination, control, OTHER_KEY).create(
        spec(url="https://hooks.example/in", secret=HOOK_SECRET)
    )
    for name, store, reason in (
        ("plain-a", make_store(coordination, control, SECRET_KEY), "no key of security.secret_key opens it"),
        ("plain-b", make_store(coordination, control), "is sealed and no key is configured to open it"),
    ):
        good = await store.create(spec(name))
        catalog = await store.catalog()
        assert good.batch.id in [item.batch.id for item in catalog.batches]
        [broken] = catalog.broken
        assert (broken.batch_id, broken.name) == (sealed.batch.id, "forms")
        assert broken.reason.startswith(f"webhook.secret: {reason}"), broken.reason
        with pytest.raises(BrokenBatchDocument, match="batch document is not valid"):
            await store.get(sealed.batch.id)


async def test_rotation_reads_with_the_old_key_second_and_rewrites_with_the_first(
    coordination: Coordination, control: Location
) -> None:
    """With the new key first and the old one second, a document sealed with the old key still
    reads; its next write seals with the new key, so the old key can then be dropped."""
    old = await make_store(coordination, control, OTHER_KEY).create(spec(url=HOOK_URL, secret=HOOK_SECRET))
    rotated = make_store(coordination, control, SECRET_KEY, OTHER_KEY)
    loaded = (await rotated.get(old.batch.id)).batch
    assert loaded.webhook is not None
    assert loaded.webhook.secret is not None
    assert loaded.webhook.secret.get_secret_value() == HOOK_SECRET
    await rotated.set_status(old.batch.id, "paused")
    webhook = json.loads(await raw(coordination, old.batch.id))["webhook"]
    assert (SEALER.open(webhook["secret"]), SEALER.open(webhook["url"])) == (HOOK_SECRET, HOOK_URL)
    new_only = (await make_store(coordination, control, SECRET_KEY).get(old.batch.id)).batch
    assert (new_only.status, new_only.webhook) == ("paused", loaded.webhook)
    with pytest.raises(BrokenBatchDocument):
        await make_store(coordination, control, OTHER_KEY).get(old.batch.id)


async def test_a_legacy_clear_document_still_reads_and_is_sealed_on_its_next_write(
    coordination: Coordination, control: Location
) -> None:
    """A document written before sealing (secret and URL in clear) reads with or without a key;
    without one, a status change keeps it as it was while an edit is refused; with one, the next
    write seals it."""
    legacy = await make_store(coordination, control, SECRET_KEY).create(spec())
    with_hook = legacy.batch.model_copy(update={"webhook": spec(url=HOOK_URL, secret=HOOK_SECRET).webhook})
    clear = with_hook.model_dump_json(context={"reveal_secrets": True}).encode()
    await coordination.replace(f"batches/{legacy.batch.id}.json", clear, version=legacy.etag)

    keyless = make_store(coordination, control)
    assert (await keyless.get(legacy.batch.id)).batch.webhook == with_hook.webhook
    await keyless.set_status(legacy.batch.id, "paused")
    assert HOOK_SECRET.encode() in await raw(coordination, legacy.batch.id)
    with pytest.raises(BatchRuleViolation, match=r"webhook\.secret: cannot be stored without a key"):
        await keyless.update(legacy.batch.id, {"file_format": "xls"})

    store = make_store(coordination, control, SECRET_KEY)
    assert (await store.get(legacy.batch.id)).batch.webhook == with_hook.webhook
    await store.update(legacy.batch.id, {}, status="available")  # the operator resumes it
    data = await raw(coordination, legacy.batch.id)
    assert HOOK_SECRET.encode() not in data
    assert URL_PASSWORD.encode() not in data
    assert (await store.get(legacy.batch.id)).batch.webhook == with_hook.webhook


async def test_a_process_learns_the_secrets_it_opens(coordination: Coordination, control: Location) -> None:
    """A process that only reads a sealed document (a fresh redactor) masks the opened secret and
    URL password in its logs."""
    created = await make_store(coordination, control, SECRET_KEY).create(
        spec(url=HOOK_URL, secret=HOOK_SECRET)
    )
    stream = io.StringIO()
    configure_logging(stream=stream)  # a new process's redactor: it learns by reading
    try:
        await make_store(coordination, control, SECRET_KEY).get(created.batch.id)
        structlog.get_logger().info("oops", note=f"{HOOK_SECRET} and {URL_PASSWORD}")
    finally:
        structlog.reset_defaults()
    assert "oops" in stream.getvalue()
    assert HOOK_SECRET not in stream.getvalue()
    assert URL_PASSWORD not in stream.getvalue()


async def test_api_create_with_a_secret_and_no_key_is_422_naming_webhook_secret(
    start_api: StartApi, tmp_path: Path
) -> None:
    """Over the API, a batch with a webhook secret on a store without a key is a 422 whose
    violations name `webhook.secret` and the setting; nothing is stored."""
    control = tmp_path / "control"
    control.mkdir()
    location = Location.parse(str(control))
    store = BatchStore(StorageCoordination(LocalStorage(location)), control=location, domains=DOMAINS)
    api = await start_api(store)
    body = api_spec(webhook={"url": "https://hooks.example/in", "secret": HOOK_SECRET})
    response, answer = await api.call("POST", "/api/v1/batches", json=body)
    assert (response.status, answer["error"]["code"]) == (422, "invalid_batch")
    [violation] = answer["error"]["violations"]
    assert violation["field"] == "webhook.secret"
    assert KEY_MESSAGE in violation["rule"]
    assert await store.list_batches() == []


def test_cli_create_with_a_secret_and_no_key_is_a_clear_error(cli: Cli) -> None:
    """`batch create --webhook-secret-file` with no key configured exits 2 with one line naming
    `webhook.secret` and the setting, and writes no batch document."""
    config = CONFIG.format(ocr_secret=OCR_SECRET, secret_key=SECRET_KEY)
    (cli.workdir / "ocrbatch.toml").write_text(config.replace(f'secret_key = "{SECRET_KEY}"', ""))
    (cli.workdir / "whsec.txt").write_text(HOOK_SECRET + "\n")
    args = ("--webhook-url", "https://hooks.example/in", "--webhook-secret-file", "whsec.txt")
    _, err = cli(*CREATE_RECEIPTS, *args, expect=2)
    assert f"webhook.secret: cannot be stored without a key: {KEY_MESSAGE}" in err
    assert HOOK_SECRET not in err
    assert not list((cli.workdir / "control").glob("batches/*.json"))


def test_the_key_setting_takes_a_file_a_list_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`security.secret_key` is one or more Fernet keys: comma-separated (environment), a TOML list,
    or one a line in `secret_key_file`; the first is the one that seals."""
    monkeypatch.setenv("OCRBATCH_SECURITY__SECRET_KEY", f"{SECRET_KEY}, {OTHER_KEY}")
    assert load_settings(None).security.secret_keys() == [SECRET_KEY, OTHER_KEY]
    monkeypatch.delenv("OCRBATCH_SECURITY__SECRET_KEY")
    (tmp_path / "keys").write_text(f"{OTHER_KEY}\n{SECRET_KEY}\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[security]\nsecret_key_file = "{tmp_path / "keys"}"\n')
    assert load_settings(config).security.secret_keys() == [OTHER_KEY, SECRET_KEY]
    config.write_text(f'[security]\nsecret_key = ["{SECRET_KEY}"]\n')
    assert load_settings(config).security.secret_keys() == [SECRET_KEY]
    assert load_settings(None).security.secret_keys() == []


def test_a_bad_key_stops_with_the_rule_and_never_the_value(tmp_path: Path) -> None:
    """A value that is not Fernet keys is a setting error naming `security.secret_key` and the rule,
    without the value."""
    config = tmp_path / "c.toml"
    for value in ("not-a-fernet-key-but-long-enough", f"{SECRET_KEY},{SECRET_KEY[:-4]}", " , "):
        config.write_text(f'[security]\nsecret_key = "{value}"\n')
        with pytest.raises(
            ConfigError, match=r"security\.secret_key: must be one or more Fernet keys"
        ) as bad:
            load_settings(config)
        assert "not-a-fernet" not in str(bad.value)
        assert SECRET_KEY[:-4] not in str(bad.value)
