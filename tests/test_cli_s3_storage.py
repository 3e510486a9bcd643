"""The `ocrbatch batch` commands, run through the real entry point with their control documents on
S3 (moto): one document per batch in the bucket, and a missing bucket as an operational error."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from fixtures.cli import CREATE_FORMS, Cli

from ocrbatch.cli.root import EXIT_FAILURE


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
