"""The HTTP API of `ocrbatch serve`: batch CRUD, search and status under `/api/v1`, plus health.

Every error is JSON, `{"error": {"code", "message", "violations"?}}`, with messages that are safe
to show (they never carry the API token or a batch's secrets). Edits take the same input as the
CLI and go through the same `BatchStore`, so the rules and their wording are the same.

A batch document that is not a valid batch is listed as `{"id", "name", "status": "broken",
"status_reason", "key", "document"}` among the batches; reading, editing or a conditional delete
of it is 409 `broken_batch` (a plain delete removes it). `/readyz` is 503 `not_ready` while any
document is broken or the control storage does not answer, with the reason and the details.

Preconditions: `ETag` is the stored document's etag. An edit or delete sent with `If-Match` is
refused with 412 `precondition_failed` when the batch changed since that etag (checked before
the change and again by the store's compare-and-swap write); without `If-Match`, a lost race or
a busy catalog is 409 `conflict`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn

import structlog
from aiohttp import web
from pydantic import SecretStr

from ocrbatch.batches.broken import BrokenBatch, BrokenBatchDocument
from ocrbatch.batches.events import NotAnEvent, SnsConfirmation, Upload, parse_notification
from ocrbatch.batches.remote import LocationGate, RemoteEdits
from ocrbatch.batches.spec import Batch, BatchStatus
from ocrbatch.batches.store import BatchStore, StoredBatch
from ocrbatch.errors import (
    BatchConflict,
    BatchNotFound,
    BatchRuleViolation,
    ExportRefused,
    ObjectNotFound,
    StorageError,
)
from ocrbatch.exports.http import stream_export
from ocrbatch.service.access import (
    CONSOLE_PREFIX,
    EVENTS_PATH,
    Handler,
    auth_middleware,
    cross_site_middleware,
    host_middleware,
)
from ocrbatch.service.responses import HTTP_CODES, ApiError, json_response
from ocrbatch.service.sns import (
    SNS_TYPE_HEADER,
    SnsConfirmationFailed,
    SnsRefused,
    SnsVerifier,
    is_sns_message,
)
from ocrbatch.worker.operations import BatchOperations
from ocrbatch.worker.views import BatchProgress

ReadReport = Callable[[Batch], Awaitable[dict[str, Any] | None]]
# Raises `NotReady` (or `StorageError`) when not ready; returns the details to show.
Ready = Callable[[], Awaitable[Mapping[str, Any] | None]]
OnUploads = Callable[[list[Upload]], Awaitable[int]]  # returns how many uploads a batch wanted

API_PREFIX = "/api/v1"
_SETTABLE_STATUSES: tuple[BatchStatus, ...] = ("paused", "available")
log = structlog.get_logger("ocrbatch.api")


class NotReady(Exception):
    """The service cannot do its work now: `reason` says why, `details` (JSON) what was found."""

    def __init__(self, reason: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = dict(details or {})


def create_app(
    store: BatchStore,
    *,
    token: SecretStr | None,
    public_hosts: Sequence[str] = (),
    allowed_locations: Sequence[str] = (),
    on_batch_changed: Callable[[Batch], None] | None = None,
    read_report: ReadReport | None = None,
    ready: Ready | None = None,
    metrics: Callable[[], bytes] | None = None,
    on_uploads: OnUploads | None = None,
    sns: SnsVerifier | None = None,
    operations: BatchOperations | None = None,
    console: web.Application | None = None,
) -> web.Application:
    """The aiohttp application; auth is off when `token` is None (loopback only, see `check_bind`).
    It answers to loopback Host names and `public_hosts`; batches it makes or edits read and write
    only inside `allowed_locations` (none when empty). With `operations`, the routes about a
    batch's work (estimate, failures, retry, outbox) are served; `console` is mounted at
    `/console/` (it checks its own sessions; the Host and Origin checks apply to it too)."""
    app = web.Application(
        middlewares=[
            _error_middleware,
            host_middleware(public_hosts),
            cross_site_middleware,
            auth_middleware(token),
        ]
    )
    handlers = _Handlers(
        store,
        read_report=read_report,
        ready=ready,
        edits=RemoteEdits(store, LocationGate(allowed_locations), on_batch_changed=on_batch_changed),
        operations=operations,
    )
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    if on_uploads is not None:
        app.router.add_post(EVENTS_PATH, _events_handler(on_uploads, sns))
    if metrics is not None:
        render = metrics

        async def metrics_handler(request: web.Request) -> web.Response:
            return web.Response(body=render(), content_type="text/plain", charset="utf-8")

        app.router.add_get("/metrics", metrics_handler)
    app.router.add_get(f"{API_PREFIX}/batches", handlers.list_batches)
    app.router.add_post(f"{API_PREFIX}/batches", handlers.create_batch)
    app.router.add_get(f"{API_PREFIX}/batches/{{ref}}", handlers.get_batch)
    app.router.add_patch(f"{API_PREFIX}/batches/{{ref}}", handlers.edit_batch)
    app.router.add_delete(f"{API_PREFIX}/batches/{{ref}}", handlers.delete_batch)
    app.router.add_get(f"{API_PREFIX}/batches/{{ref}}/status", handlers.batch_status)
    if operations is not None:
        work = _WorkHandlers(operations)
        app.router.add_get(f"{API_PREFIX}/batches/{{ref}}/estimate", work.estimate)
        app.router.add_get(f"{API_PREFIX}/batches/{{ref}}/failures", work.failures)
        app.router.add_post(f"{API_PREFIX}/batches/{{ref}}/retry-failed", work.retry_failed)
        app.router.add_get(f"{API_PREFIX}/batches/{{ref}}/outbox", work.outbox)
        app.router.add_get(f"{API_PREFIX}/batches/{{ref}}/export", work.export)
    if console is not None:
        app.add_subapp(CONSOLE_PREFIX, console)
    return app


# -- middlewares ------------------------------------------------------------------------------


# Operator-facing errors and their HTTP status and code; first match wins.
_ERROR_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (BatchNotFound, 404, "not_found"),
    (ObjectNotFound, 404, "not_found"),
    (BrokenBatchDocument, 409, "broken_batch"),
    (ExportRefused, 422, "invalid_export"),
    (BatchRuleViolation, 422, "invalid_batch"),
    (BatchConflict, 409, "conflict"),
    (StorageError, 503, "storage_unavailable"),
)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON error; unexpected ones logged and shown as a bare 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        # Routing (404, 405) and body-size (413) errors raised by aiohttp itself.
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        error = ApiError(exc.status, HTTP_CODES.get(exc.status, "http_error"), exc.reason, headers=headers)
    except Exception as exc:
        error = _api_error(request, exc)
    return error.response()


def _api_error(request: web.Request, exc: Exception) -> ApiError:
    for kind, status, code in _ERROR_STATUS:
        if isinstance(exc, kind):
            if isinstance(exc, StorageError):
                log.warning("api.storage_error", method=request.method, path=request.path, error=str(exc))
            violations = exc.violations if isinstance(exc, BatchRuleViolation) else None
            return ApiError(status, code, str(exc), violations=violations)
    log.exception("api.internal_error", method=request.method, path=request.path)
    return ApiError(500, "internal", "internal error")


# -- handlers ---------------------------------------------------------------------------------


def _events_handler(on_uploads: OnUploads, sns: SnsVerifier | None) -> Handler:
    """S3 event notifications (MinIO webhook target, SNS HTTP subscription) for the worker. An SNS
    message is believed only once `sns` verified it (403 otherwise, and without `sns`)."""

    async def events(request: web.Request) -> web.Response:
        body = await _json_object(request)
        if is_sns_message(body, request.headers.get(SNS_TYPE_HEADER)):
            await _verify_sns(request, body, sns)
        try:
            parsed = parse_notification(body)
        except NotAnEvent as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        if isinstance(parsed, SnsConfirmation):
            if sns is None:  # refused by _verify_sns already; this tells the type checker
                _refuse_sns(request, "SNS messages are not accepted here")
            try:
                await sns.confirm(parsed.subscribe_url)
            except SnsRefused as exc:
                _refuse_sns(request, f"the SNS message is refused: {exc}")
            except SnsConfirmationFailed as exc:
                raise ApiError(502, "bad_gateway", str(exc)) from None
            log.info("events.sns_subscription_confirmed", topic=parsed.topic_arn)
            return json_response({"confirmed": parsed.topic_arn})
        wanted = await on_uploads(parsed)
        return json_response({"uploads": len(parsed), "for_batches": wanted})

    return events


async def _verify_sns(request: web.Request, body: Mapping[str, Any], sns: SnsVerifier | None) -> None:
    if sns is None:
        _refuse_sns(request, "SNS messages are not accepted here")
    try:
        await sns.verify(body, request.headers.get(SNS_TYPE_HEADER))
    except SnsRefused as exc:
        _refuse_sns(request, f"the SNS message is refused: {exc}")


def _refuse_sns(request: web.Request, reason: str) -> NoReturn:
    log.warning("events.sns_refused", reason=reason, remote=request.remote)
    raise ApiError(403, "forbidden", reason)


class _Handlers:
    def __init__(
        self,
        store: BatchStore,
        *,
        read_report: ReadReport | None,
        ready: Ready | None,
        edits: RemoteEdits,
        operations: BatchOperations | None,
    ) -> None:
        self._edits = edits
        self._operations = operations
        self._store = store
        self._read_report = read_report
        self._ready = ready

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        details: Mapping[str, Any] | None = None
        if self._ready is not None:
            try:
                details = await self._ready()
            except NotReady as exc:
                return _not_ready(exc.reason, exc.details)
            except StorageError as exc:
                return _not_ready(str(exc))
            except Exception:
                log.exception("api.readiness_failed")
                return _not_ready("the readiness check failed")
        return json_response({"status": "ready", **(details or {})})

    async def list_batches(self, request: web.Request) -> web.Response:
        catalog = await self._store.catalog(request.query.get("search") or None)
        listed = [_batch_json(item.batch) for item in catalog.batches]
        listed += [broken.as_dict() for broken in catalog.broken]
        return json_response({"batches": listed})

    async def create_batch(self, request: web.Request) -> web.Response:
        created = await self._edits.create(await _json_object(request), via="api")
        return _batch_response(created, status=201)

    async def get_batch(self, request: web.Request) -> web.Response:
        return _batch_response(await self._store.get(request.match_info["ref"]))

    async def edit_batch(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        changes = await _json_object(request)
        status = _requested_status(changes.pop("status", None))
        if not changes and status is None:
            raise ApiError(400, "bad_request", "nothing to change: send spec fields and/or a status")
        if_match = await self._precondition(request, ref)
        try:
            updated = await self._edits.update(ref, changes, via="api", if_match=if_match, status=status)
        except BatchConflict as exc:
            await self._raise_conflict(exc, ref, if_match)
        return _batch_response(updated)

    async def delete_batch(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if_match = await self._precondition(request, ref)
        try:
            deleted = await self._edits.delete(ref, via="api", if_match=if_match)
        except BatchConflict as exc:
            await self._raise_conflict(exc, ref, if_match)
        if isinstance(deleted, BrokenBatch):
            return json_response({"deleted": deleted.as_dict()})
        return json_response({"deleted": _batch_json(deleted)})

    async def batch_status(self, request: web.Request) -> web.Response:
        """The batch with its status, report and progress: live while this process's pass works
        on it (with `operations`), else from `_report.json`."""
        ref = request.match_info["ref"]
        if self._operations is not None:
            progress = await self._operations.progress(ref)
        else:
            batch = (await self._store.get(ref)).batch
            report = await self._read_report(batch) if self._read_report is not None else None
            progress = BatchProgress(batch, report, live=False)
        return json_response({"batch": _batch_json(progress.batch), **progress.to_json()})

    async def _precondition(self, request: web.Request, ref: str) -> str | None:
        """The stored etag the client's `If-Match` names; 412 when the batch has moved on."""
        wanted = request.headers.get("If-Match", "").strip()
        if not wanted or wanted == "*":
            return None  # "*" only asks that the batch exist, which every edit requires anyway
        current = await self._store.get(ref)
        if _opaque(wanted) != _opaque(current.etag):
            raise _precondition_failed(current.batch)
        return current.etag

    async def _raise_conflict(self, exc: BatchConflict, ref: str, if_match: str | None) -> NoReturn:
        """412 when the client's etag is now stale; otherwise the conflict (say, a busy catalog)."""
        if if_match is not None:
            current = await self._store.get(ref)
            if current.etag != if_match:
                raise _precondition_failed(current.batch) from None
        raise exc


class _WorkHandlers:
    """The routes about a batch's work, over the same operations as the CLI and the console."""

    def __init__(self, operations: BatchOperations) -> None:
        self._operations = operations

    async def estimate(self, request: web.Request) -> web.Response:
        latency_s = _number_query(request, "call_latency_s", default=1.0)
        return json_response(
            await self._operations.estimate(request.match_info["ref"], call_latency_s=latency_s)
        )

    async def failures(self, request: web.Request) -> web.Response:
        page = await self._operations.failures(
            request.match_info["ref"],
            reason=request.query.get("reason") or None,
            after=request.query.get("after") or None,
            limit=int(_number_query(request, "limit", default=50)),
        )
        return json_response(
            {
                "failures": [record.to_json() for record in page.items],
                "after": page.after,
                "scanned_all": page.scanned_all,
            }
        )

    async def retry_failed(self, request: web.Request) -> web.Response:
        keys = None
        if request.can_read_body:
            body = await _json_object(request)
            keys = body.get("keys")
            if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                raise BatchRuleViolation([("keys", "must be a list of input keys")])
        batch, retried = await self._operations.retry_failed(request.match_info["ref"], keys)
        log.info("batch.failed_retried", batch_id=batch.id, items=len(retried), via="api")
        return json_response({"batch": batch.name, "retrying": retried})

    async def outbox(self, request: web.Request) -> web.Response:
        return json_response((await self._operations.outbox(request.match_info["ref"])).to_json())

    async def export(self, request: web.Request) -> web.StreamResponse:
        return await stream_export(request, self._operations, request.match_info["ref"])


# -- helpers ----------------------------------------------------------------------------------


def _not_ready(reason: str, details: Mapping[str, Any] | None = None) -> web.Response:
    """503 with the reason as an error (as every error is shown) beside the details found."""
    body = {"status": "not_ready", **(details or {})}
    body["error"] = {"code": "not_ready", "message": reason}
    return json_response(body, status=503)


def _batch_json(batch: Batch) -> dict[str, Any]:
    return batch.model_dump(mode="json")  # webhook secrets come out masked


def _batch_response(stored: StoredBatch, *, status: int = 200) -> web.Response:
    return json_response(
        _batch_json(stored.batch), status=status, headers={"ETag": f'"{_opaque(stored.etag)}"'}
    )


def _opaque(etag: str) -> str:
    """The etag without quotes, so `"abc"`, `abc` and the stored form compare equal."""
    return etag.strip().removeprefix("W/").strip('"')


def _precondition_failed(batch: Batch) -> ApiError:
    return ApiError(
        412,
        "precondition_failed",
        f"batch {batch.name!r} was changed since the version named by If-Match; read it again and retry",
    )


def _number_query(request: web.Request, name: str, *, default: float) -> float:
    """A positive number from the query string; 400 naming it otherwise."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise ApiError(400, "bad_request", f"{name} must be a positive number, not {text[:40]!r}")
    return value


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 otherwise."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
        raise ApiError(400, "bad_request", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    return body


def _requested_status(value: object) -> BatchStatus | None:
    if value is None:
        return None
    for status in _SETTABLE_STATUSES:
        if value == status:
            return status
    raise BatchRuleViolation([("status", "can only be set to 'paused' or 'available'")])
