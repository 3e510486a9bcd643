"""The batch list and its forms (the CLOVA console's screen), and a batch's own page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from ocrbatch.batches.remote import RemoteEdits
from ocrbatch.batches.spec import BatchStatus
from ocrbatch.batches.store import StoredBatch
from ocrbatch.console.context import (
    BATCH_PATH,
    HOME,
    batch_url,
    context_of,
    count_query,
    flash,
    form_text,
    posted_text,
    render,
)
from ocrbatch.console.forms import FILE_FORMATS, LANGUAGES, BatchForm, batch_input, domain_info
from ocrbatch.errors import BatchConflict, BatchNotFound, BatchRuleViolation
from ocrbatch.exports.formats import FORMATS
from ocrbatch.settings import DomainSettings
from ocrbatch.worker.operations import BatchOperations

# What a redirect after a change may ask the next page to say (anything else is ignored).
FLASH_MESSAGES: Final = frozenset({"created", "saved", "paused", "resumed"})


class BatchPages:
    """`/batches` (search, refresh, create, delete), `/batches/new`, POST `/batches`, POST
    `/batches/delete` (asks for confirmation first), `/batches/{id}/settings` (GET, POST); the
    batch page `/batches/{id}` with its `/progress` fragment (polled by htmx), POST `pause`,
    `resume`, `retry-failed`, and `/estimate` (a fragment for htmx, a page without it)."""

    def __init__(
        self, *, operations: BatchOperations, edits: RemoteEdits, domains: Mapping[str, DomainSettings]
    ) -> None:
        self._operations = operations
        self._edits = edits
        self._domains = dict(domains)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/batches", self.batch_list)
        router.add_get("/batches/new", self.new_batch)
        router.add_post("/batches", self.create_batch)
        router.add_post("/batches/delete", self.delete_batches)
        router.add_get(BATCH_PATH, self.batch_page)
        router.add_get(f"{BATCH_PATH}/settings", self.settings_form)
        router.add_post(f"{BATCH_PATH}/settings", self.edit_batch)
        router.add_get(f"{BATCH_PATH}/progress", self.progress)
        router.add_post(f"{BATCH_PATH}/pause", self.pause)
        router.add_post(f"{BATCH_PATH}/resume", self.resume)
        router.add_get(f"{BATCH_PATH}/estimate", self.estimate)
        router.add_post(f"{BATCH_PATH}/retry-failed", self.retry_failed)

    async def batch_list(self, request: web.Request) -> web.StreamResponse:
        search = request.query.get("search", "").strip()
        catalog = await self._edits.store.catalog(search or None)
        rows = [
            {"batch": item.batch, "info": domain_info(item.batch, self._domains.get(item.batch.domain))}
            for item in catalog.batches
        ]
        return render(
            "list.html",
            request,
            {
                "rows": rows,
                "broken": catalog.broken,
                "search": search,
                "deleted": count_query(request, "deleted"),
                "none_selected": "none_selected" in request.query,
            },
        )

    async def new_batch(self, request: web.Request) -> web.StreamResponse:
        return self._form_page(request, BatchForm.blank(self._domains), editing=None)

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        posted = posted_text(await request.post())
        form = BatchForm.posted(posted, BatchForm.blank(self._domains))
        body, unreadable = batch_input(posted, self._domains)
        if unreadable:
            form.refuse(unreadable)
            return self._form_page(request, form, editing=None, status=422)
        try:
            created = await self._edits.create(body, via="console")
        except BatchRuleViolation as refused:
            form.refuse(refused.violations)
            return self._form_page(request, form, editing=None, status=422)
        except BatchConflict as exc:
            form.general_errors.append(str(exc))
            return self._form_page(request, form, editing=None, status=409)
        raise web.HTTPSeeOther(batch_url(created.batch.id, msg="created"))

    async def settings_form(self, request: web.Request) -> web.StreamResponse:
        stored = await self._edits.store.get(request.match_info["id"])
        return self._form_page(request, BatchForm.of(stored.batch), editing=stored)

    async def edit_batch(self, request: web.Request) -> web.StreamResponse:
        """The edit, if the batch is still the version the form was opened on (its etag travels in
        the form); else the form again, showing the batch as it is now."""
        stored = await self._edits.store.get(request.match_info["id"])
        posted = posted_text(await request.post())
        form = BatchForm.posted(posted, BatchForm.of(stored.batch))
        if posted.get("etag") != stored.etag:
            return self._conflict(request, stored)
        body, unreadable = batch_input(posted, self._domains, editing=stored.batch)
        if unreadable:
            form.refuse(unreadable)
            return self._form_page(request, form, editing=stored, status=422)
        try:
            updated = await self._edits.update(stored.batch.id, body, via="console", if_match=stored.etag)
        except BatchRuleViolation as refused:
            form.refuse(refused.violations)
            return self._form_page(request, form, editing=stored, status=422)
        except BatchConflict:
            return self._conflict(request, await self._edits.store.get(stored.batch.id))
        raise web.HTTPSeeOther(batch_url(updated.batch.id, msg="saved"))

    def _conflict(self, request: web.Request, current: StoredBatch) -> web.Response:
        form = BatchForm.of(current.batch)
        form.general_errors.append(context_of(request).t("form.conflict"))
        return self._form_page(request, form, editing=current, status=409)

    def _form_page(
        self, request: web.Request, form: BatchForm, *, editing: StoredBatch | None, status: int = 200
    ) -> web.Response:
        domains = [{"name": name, "kind": domain.kind} for name, domain in self._domains.items()]
        return render(
            "form.html",
            request,
            {
                "form": form,
                "editing": editing,
                "domains": domains,
                "languages": LANGUAGES,
                "file_formats": FILE_FORMATS,
            },
            status=status,
        )

    async def delete_batches(self, request: web.Request) -> web.StreamResponse:
        """Delete the selected batches once confirmed (the list's pop-up confirms; without
        scripts a confirmation page asks). Results are never touched."""
        form = await request.post()
        ids = [value for value in form.getall("ids", []) if isinstance(value, str)]
        if not ids:
            raise web.HTTPSeeOther(f"{HOME}?none_selected=1")
        if form_text(form, "confirmed") != "1":
            catalog = await self._edits.store.catalog()
            chosen = [item.batch for item in catalog.batches if item.batch.id in ids]
            chosen_broken = [item for item in catalog.broken if item.batch_id in ids]
            return render("confirm_delete.html", request, {"batches": chosen, "broken": chosen_broken})
        deleted = 0
        for batch_id in ids:
            try:
                await self._edits.delete(batch_id, via="console")
            except BatchNotFound:
                continue
            deleted += 1
        raise web.HTTPSeeOther(f"{HOME}?{urlencode({'deleted': deleted})}")

    # -- the batch page

    async def batch_page(self, request: web.Request) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        progress = await self._operations.progress(batch_id)
        outbox = await self._operations.outbox(progress.batch)
        return render(
            "batch.html",
            request,
            {
                "batch": progress.batch,
                "p": progress,
                "outbox": outbox,
                "info": domain_info(progress.batch, self._domains.get(progress.batch.domain)),
                "kind": self._operations.domain_kind(progress.batch),
                "export_formats": FORMATS,
                "msg": flash(request, "msg", FLASH_MESSAGES),
                "retried": count_query(request, "retried"),
            },
        )

    async def progress(self, request: web.Request) -> web.StreamResponse:
        progress = await self._operations.progress(request.match_info["id"])
        return render("_progress.html", request, {"batch": progress.batch, "p": progress})

    async def pause(self, request: web.Request) -> web.StreamResponse:
        return await self._set_status(request, "paused")

    async def resume(self, request: web.Request) -> web.StreamResponse:
        return await self._set_status(request, "available")

    async def _set_status(self, request: web.Request, status: BatchStatus) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        await self._edits.update(batch_id, {}, via="console", status=status)
        raise web.HTTPSeeOther(batch_url(batch_id, msg="paused" if status == "paused" else "resumed"))

    async def estimate(self, request: web.Request) -> web.StreamResponse:
        """The dry run's figures: a fragment for htmx (the batch page's [Estimate]), else a page."""
        batch_id = request.match_info["id"]
        batch = await self._operations.batch(batch_id)
        try:
            figures: dict[str, Any] | None = await self._operations.estimate(batch)
            refused = None
        except BatchRuleViolation as exc:
            figures, refused = None, str(exc)
        page = "_estimate.html" if request.headers.get("HX-Request") == "true" else "estimate.html"
        return render(page, request, {"batch": batch, "figures": figures, "refused": refused})

    async def retry_failed(self, request: web.Request) -> web.StreamResponse:
        batch, retried = await self._operations.retry_failed(request.match_info["id"])
        raise web.HTTPSeeOther(batch_url(batch.id, retried=len(retried)))
