"""Locations: s3://bucket/prefix or a local directory, and when one lies inside another."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocrbatch.locations import Location, masked_url


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://bkt", "bkt", ""),
        ("s3://bkt/", "bkt", ""),
        ("s3://bkt/in", "bkt", "in/"),
        ("s3://bkt/in/scans/", "bkt", "in/scans/"),
        ("s3://my.bucket-1/영수증", "my.bucket-1", "영수증/"),
    ],
)
def test_s3_locations_parse(text: str, bucket: str, prefix: str) -> None:
    """S3 locations keep the bucket and a prefix that is empty or ends in '/'."""
    location = Location.parse(text)
    assert (location.scheme, location.bucket, location.prefix) == ("s3", bucket, prefix)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must not be empty"),
        ("s3://B/x", "bucket name 'B' is invalid"),
        ("s3://ab/x", "bucket name 'ab' is invalid"),
        ("s3://bkt/a//b", "must not contain empty"),
        ("s3://bkt/a/../b", "must not contain empty"),
        ("http://host/x", "must be s3://bucket/prefix or a local directory path"),
    ],
)
def test_bad_locations_are_refused(text: str, reason: str) -> None:
    """Unusable locations are refused with the reason."""
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        Location.parse(text)


def test_local_paths_are_absolute_and_normalised(tmp_path: Path) -> None:
    """Relative and file:// paths become absolute normalised directories."""
    assert Location.parse("in/../out", base_dir=tmp_path).prefix == str(tmp_path / "out")
    assert Location.parse(f"file://{tmp_path}/x/").prefix == str(tmp_path / "x")


@pytest.mark.parametrize(
    ("outer", "inner", "contains"),
    [
        ("s3://bkt/in", "s3://bkt/in/results", True),
        ("s3://bkt/in", "s3://bkt/in", True),
        ("s3://bkt", "s3://bkt/anything", True),
        ("s3://bkt/in", "s3://bkt/inbox", False),
        ("s3://bkt/in", "s3://other/in", False),
        ("/data/in", "/data/in/out", True),
        ("/data/in", "/data/inbox", False),
        ("/", "/data", True),
        ("/data", "s3://data/x", False),
    ],
)
def test_containment_respects_segment_boundaries(outer: str, inner: str, contains: bool) -> None:
    """A location contains another only at a '/' boundary, within the same bucket or filesystem."""
    assert Location.parse(outer).contains(Location.parse(inner)) is contains
    assert Location.parse(outer).overlaps(Location.parse(inner)) is contains


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa55@hooks.example/in?x=1", "https://***@hooks.example/in?x=1"),
        ("https://token@hooks.example", "https://***@hooks.example"),
        ("http://a:b@c@hooks.example:8443/p/q@r", "http://***@hooks.example:8443/p/q@r"),
        ("https://hooks.example/p@q", "https://hooks.example/p@q"),
        ("https://hooks.example/in", "https://hooks.example/in"),
        ("not a url", "not a url"),
    ],
)
def test_urls_are_shown_without_their_credentials(url: str, shown: str) -> None:
    """The user part of a URL (user, password, or a token used as user) is shown as `***`; an `@`
    in the path is not a credential; anything else is left as it is."""
    assert masked_url(url) == shown
