"""Stores that lack what S3 has: listings that must not end early, and capabilities probed, not
assumed. The NAVER Object Storage profile is a proxy in front of moto that ignores V2 listing
parameters and drops conditional headers, as NAVER's S3 API documents."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from fixtures.storage import listed_keys
from structlog.testing import capture_logs

from bench.s3_proxy import StartS3Proxy
from ocrbatch.errors import StorageError, UnsupportedOperation
from ocrbatch.locations import Location
from ocrbatch.settings import StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.storage.s3 import open_s3_client


def through(settings: StorageSettings, url: str, **changes: object) -> StorageSettings:
    """`settings` reaching the store at `url` instead."""
    return settings.model_copy(update={"endpoint_url": url, **changes})


async def fill(storage: Storage, count: int, *, prefix: str = "in/") -> list[str]:
    """`count` small objects, 64 writes at a time; returns their keys, sorted."""
    keys = [f"{prefix}scan-{index:05}.png" for index in range(count)]
    for start in range(0, count, 64):
        await asyncio.gather(*(storage.write(key, b"x") for key in keys[start : start + 64]))
    return sorted(keys)


async def test_v1_only_store_lists_every_key(
    s3_settings: StorageSettings, s3_bucket: str, start_s3_proxy: StartS3Proxy
) -> None:
    """On a store that answers V2 listings as V1 (NAVER), 2,500 keys list as 2,500: the first
    listing finds the V1 API, and pages continue by Marker after each page's last key."""
    proxy = await start_s3_proxy("ncp")
    location = Location.parse(f"s3://{s3_bucket}/data/")
    async with StorageFactory(s3_settings) as direct:
        expected = await fill(await direct.open(location), 2500)
    async with StorageFactory(through(s3_settings, proxy.url)) as storages:
        storage = await storages.open(location)
        with capture_logs() as logs:
            assert await listed_keys(storage, "in/") == expected
            assert await listed_keys(storage, "in/", start_after=expected[1499]) == expected[1500:]
        assert storages.endpoint(location).list_api == "v1"
    assert [entry["list_api"] for entry in logs if entry["event"] == "storage.list_api_probed"] == ["v1"]
    # 1,000 keys a page: three pages, then one from the middle (after the V2 request that found V1).
    assert (proxy.counts["list_v2"], proxy.counts["list_v1"]) == (1, 4)


async def test_v2_store_is_found_to_speak_v2(s3_settings: StorageSettings, s3_bucket: str) -> None:
    """On S3 (moto) the first listing finds V2 and the listing pages by continuation token."""
    location = Location.parse(f"s3://{s3_bucket}/data/")
    async with StorageFactory(s3_settings) as storages:
        storage = await storages.open(location)
        expected = await fill(storage, 30)
        pages = [[info.key for info in page] async for page in storage.list_pages("in/", page_size=7)]
        assert [key for page in pages for key in page] == expected
        sizes = [len(page) for page in pages]
        assert (sizes, storages.endpoint(location).list_api) == ([7, 7, 7, 7, 2], "v2")


async def test_truncated_page_without_token_resumes_after_its_last_key(
    s3_settings: StorageSettings, s3_bucket: str, start_s3_proxy: StartS3Proxy
) -> None:
    """A store that says a V2 page is truncated but gives no continuation token: the listing goes on
    after the page's last key (saying so in a warning), and never stops short."""
    proxy = await start_s3_proxy("no-token")
    location = Location.parse(f"s3://{s3_bucket}/data/")
    async with StorageFactory(s3_settings) as direct:
        expected = await fill(await direct.open(location), 25)
    async with StorageFactory(through(s3_settings, proxy.url)) as storages:
        storage = await storages.open(location)
        with capture_logs() as logs:
            assert [info.key async for info in storage.list("in/", page_size=10)] == expected
    assert [entry["event"] for entry in logs].count("storage.listing_resumed") == 2
    assert proxy.counts["token_dropped"] == 2


async def test_a_listing_that_repeats_keys_fails_naming_the_location(
    s3_settings: StorageSettings, s3_bucket: str, start_s3_proxy: StartS3Proxy
) -> None:
    """Forcing V2 on a store that ignores V2 parameters makes its pages start over; that repetition
    is an error naming the location, not a listing that quietly ends or loops."""
    proxy = await start_s3_proxy("ncp")
    location = Location.parse(f"s3://{s3_bucket}/data/")
    async with StorageFactory(s3_settings) as direct:
        await fill(await direct.open(location), 25)
    async with StorageFactory(through(s3_settings, proxy.url, list_api="v2")) as storages:
        storage = await storages.open(location)
        with pytest.raises(StorageError, match="went backwards or repeated a key") as raised:
            [info async for info in storage.list("in/", page_size=10)]
    assert str(location) in str(raised.value)


async def test_capabilities_are_probed_per_store(
    s3_settings: StorageSettings, s3_bucket: str, start_s3_proxy: StartS3Proxy, local_root: Path
) -> None:
    """The probe tells moto (everything), the NAVER profile (no conditional writes, metadata kept),
    a store that drops metadata, and a local directory apart; its object is removed afterwards."""
    location = Location.parse(f"s3://{s3_bucket}/control/")
    found = {}
    for profile in ("aws", "ncp", "no-metadata"):
        proxy = await start_s3_proxy(profile)
        async with StorageFactory(through(s3_settings, proxy.url)) as storages:
            endpoint = await storages.capabilities(location)
            found[profile] = (endpoint.conditional_writes, endpoint.metadata, endpoint.conditional_source)
    async with StorageFactory(StorageSettings()) as storages:
        local = await storages.capabilities(Location.parse(str(local_root)))
        found["local"] = (local.conditional_writes, local.metadata, local.conditional_source)
    assert found == {
        "aws": (True, True, "probe"),
        "ncp": (False, True, "probe"),
        "no-metadata": (True, False, "probe"),
        "local": (True, True, "probe"),
    }
    async with AsyncExitStack() as stack:
        client = await open_s3_client(s3_settings, stack)
        assert "Contents" not in await client.list_objects_v2(Bucket=s3_bucket)
    assert not await asyncio.to_thread(lambda: list(local_root.glob("probes/*")))


async def test_conditional_writes_setting_overrides_the_probe(
    s3_settings: StorageSettings, s3_bucket: str
) -> None:
    """`conditional_writes = "no"` is believed without a probe: conditional writes are then refused
    rather than sent, even to a store that has them."""
    location = Location.parse(f"s3://{s3_bucket}/control/")
    async with StorageFactory(s3_settings.model_copy(update={"conditional_writes": "no"})) as storages:
        endpoint = await storages.capabilities(location)
        assert (endpoint.conditional_writes, endpoint.conditional_source) == (False, "configured")
        storage = await storages.open(location)
        with pytest.raises(UnsupportedOperation, match="not enforced by this store"):
            await storage.write("doc.json", b"{}", if_none_match=True)


async def test_conditional_write_to_a_store_that_drops_them_is_refused(
    s3_settings: StorageSettings, s3_bucket: str, start_s3_proxy: StartS3Proxy
) -> None:
    """A create-only write to the NAVER profile fails loudly instead of silently overwriting."""
    proxy = await start_s3_proxy("ncp")
    async with StorageFactory(through(s3_settings, proxy.url)) as storages:
        storage = await storages.open(Location.parse(f"s3://{s3_bucket}/control/"))
        await storage.write("doc.json", b"1")
        with pytest.raises(UnsupportedOperation, match="conditional writes are not enforced"):
            await storage.write("doc.json", b"2", if_none_match=True)
        assert (await storage.read("doc.json")).data == b"1"


async def test_metadata_lives_in_sidecars_where_the_store_drops_it(
    s3_settings: StorageSettings, s3_bucket: str, start_s3_proxy: StartS3Proxy
) -> None:
    """On a store that keeps no user metadata, what was written with an object still comes back with
    head and read (from a sidecar no listing shows); an object replaced from outside does not get
    the old metadata, and deleting the object removes its sidecar."""
    proxy = await start_s3_proxy("no-metadata")
    location = Location.parse(f"s3://{s3_bucket}/out/")
    async with StorageFactory(through(s3_settings, proxy.url)) as storages:
        storage = await storages.open(location, create=True)
        assert storages.endpoint(location).metadata is False
        await storage.write("a.png.json", b"{}", metadata={"source-etag": '"abc"', "note": "영수증"})
        assert (await storage.head("a.png.json")).metadata == {"source-etag": '"abc"', "note": "영수증"}
        assert (await storage.read("a.png.json")).info.metadata["note"] == "영수증"
        assert await listed_keys(storage) == ["a.png.json"]
        async with StorageFactory(s3_settings) as direct:  # replaced by someone else
            await (await direct.open(location)).write("a.png.json", b"{other}")
        assert (await storage.head("a.png.json")).metadata == {}
        await storage.delete("a.png.json")
    async with AsyncExitStack() as stack:
        client = await open_s3_client(s3_settings, stack)
        assert "Contents" not in await client.list_objects_v2(Bucket=s3_bucket)
