"""What a batch's work left: its failure records (filtered, one at a time, retried) and its
results (listed, shown in the viewer over the input's page, downloaded)."""

from __future__ import annotations

import asyncio
from typing import Final
from urllib.parse import quote, urlencode

from aiohttp import web

from ocrbatch.console.context import (
    BATCH_PATH,
    PREFIX,
    count_query,
    form_text,
    render,
    requested_page,
    required_key,
)
from ocrbatch.console.viewer import ImageUnavailable, PageNotFound, page_image, page_view
from ocrbatch.exports.http import stream_export
from ocrbatch.worker.operations import BatchOperations

PAGE_ITEMS: Final = 50


class ResultPages:
    """`/batches/{id}/failures?reason=&after=`, `/failure?key=`, POST `/retry` (one item);
    `/results?after=`, `/result?key=&page=` (the viewer), `/image?key=&page=` (the input's page
    as an image, read through the console: no storage URL is handed out), `/download?key=`."""

    def __init__(self, operations: BatchOperations) -> None:
        self._operations = operations

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(f"{BATCH_PATH}/failures", self.failures)
        router.add_get(f"{BATCH_PATH}/failure", self.failure)
        router.add_post(f"{BATCH_PATH}/retry", self.retry_one)
        router.add_get(f"{BATCH_PATH}/results", self.results)
        router.add_get(f"{BATCH_PATH}/result", self.result)
        router.add_get(f"{BATCH_PATH}/image", self.image)
        router.add_get(f"{BATCH_PATH}/download", self.download)
        router.add_get(f"{BATCH_PATH}/export", self.export)

    async def failures(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        reason = request.query.get("reason", "").strip()
        after = request.query.get("after") or None
        batch = await self._operations.batch(batch_id)
        page = await self._operations.failures(batch, reason=reason or None, after=after, limit=PAGE_ITEMS)
        return render(
            "failures.html",
            request,
            {
                "batch": batch,
                "page": page,
                "reason": reason,
                "after": after,
                "retried": count_query(request, "retried"),
            },
        )

    async def failure(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        key = required_key(request)
        batch = await self._operations.batch(batch_id)
        record = await self._operations.failure(batch, key)
        return render("failure.html", request, {"batch": batch, "record": record})

    async def retry_one(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key = form_text(form, "key")
        if not key:
            raise web.HTTPBadRequest(text="key is required")
        batch, retried = await self._operations.retry_failed(request.match_info["id"], [key])
        raise web.HTTPSeeOther(f"{PREFIX}/batches/{batch.id}/failures?{urlencode({'retried': len(retried)})}")

    async def results(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        after = request.query.get("after") or None
        batch = await self._operations.batch(batch_id)
        page = await self._operations.results(batch, after=after, limit=PAGE_ITEMS)
        return render("results.html", request, {"batch": batch, "page": page, "after": after})

    async def result(self, request: web.Request) -> web.StreamResponse:
        """The viewer: the page's image with every field's box over it, the text beside it, the
        tables; boxes are in the coordinates of the image CLOVA read (its `convertedImageInfo`),
        else of the input's own pixels."""
        batch_id = request.match_info["id"]
        key = required_key(request)
        page_index = requested_page(request)
        batch = await self._operations.batch(batch_id)
        document = await self._operations.result(batch, key)
        try:
            view = page_view(document.response, page_index)
        except PageNotFound as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        width, height = view.width, view.height
        image_error = None
        if width is None or height is None:
            try:
                image = await asyncio.to_thread(
                    page_image, await self._operations.input_bytes(batch, key), key, page_index
                )
                width, height = image.width, image.height
            except ImageUnavailable as exc:
                image_error = str(exc)
        query = urlencode({"key": key, "page": page_index})
        return render(
            "result.html",
            request,
            {
                "batch": batch,
                "key": key,
                "view": view,
                "width": width or 1,
                "height": height or 1,
                "image_url": f"{PREFIX}/batches/{batch.id}/image?{query}",
                "image_error": image_error,
                "download_url": f"{PREFIX}/batches/{batch.id}/download?{urlencode({'key': key})}",
                "page_urls": [
                    f"{PREFIX}/batches/{batch.id}/result?{urlencode({'key': key, 'page': index})}"
                    for index in range(view.page_count)
                ],
            },
        )

    async def image(self, request: web.Request) -> web.StreamResponse:
        """The input's page as an image, read from the batch's input location by the console
        (with the session's authorisation), never by handing out a storage URL."""
        batch_id = request.match_info["id"]
        key = required_key(request)
        data = await self._operations.input_bytes(batch_id, key)
        try:
            image = await asyncio.to_thread(page_image, data, key, requested_page(request))
        except ImageUnavailable as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        return web.Response(
            body=image.data,
            content_type=image.content_type,
            headers={"Cache-Control": "private, max-age=300"},
        )

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The batch page's [Download]: the whole batch as one table, streamed as the API does."""
        return await stream_export(request, self._operations, request.match_info["id"])

    async def download(self, request: web.Request) -> web.StreamResponse:
        name, data, content_type = await self._operations.result_file(
            request.match_info["id"], required_key(request)
        )
        return web.Response(
            body=data,
            content_type=content_type,
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"},
        )
