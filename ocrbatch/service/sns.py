"""SNS HTTP subscriptions: confirming one is the only outbound request an upload event causes."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from ocrbatch.batches.events import NotAnEvent


async def confirm_sns_subscription(session: aiohttp.ClientSession, subscribe_url: str) -> None:
    """Confirm an SNS HTTP subscription by fetching its SubscribeURL: https only (loopback http is
    allowed for local stores), so a forged confirmation cannot make the server fetch internal URLs."""
    parts = urlsplit(subscribe_url)
    loopback = parts.hostname in ("localhost", "::1") or (parts.hostname or "").startswith("127.")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise NotAnEvent("the SNS SubscribeURL must be https")
    async with session.get(subscribe_url, timeout=aiohttp.ClientTimeout(total=15)) as response:
        if response.status != 200:
            raise NotAnEvent(f"confirming the SNS subscription failed: HTTP {response.status}")
