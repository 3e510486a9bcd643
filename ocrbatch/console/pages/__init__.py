"""The console's pages, under `/console`: each handler reads the request, calls the same operations
as the API (`RemoteEdits` for batch edits, `BatchOperations` for a batch's work) and renders a
template. `login.py`: the login and the language; `batches.py`: the batch list, its forms and a
batch's page; `results.py`: failures, results and the viewer."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ocrbatch.batches.remote import RemoteEdits
from ocrbatch.console.pages.batches import BatchPages
from ocrbatch.console.pages.login import LoginPages
from ocrbatch.console.pages.results import ResultPages
from ocrbatch.console.sessions import Sessions
from ocrbatch.settings import DomainSettings
from ocrbatch.worker.operations import BatchOperations


def add_routes(
    router: web.UrlDispatcher,
    *,
    operations: BatchOperations,
    edits: RemoteEdits,
    sessions: Sessions,
    domains: Mapping[str, DomainSettings],
) -> None:
    LoginPages(sessions).add_routes(router)
    BatchPages(operations=operations, edits=edits, domains=domains).add_routes(router)
    ResultPages(operations).add_routes(router)
