"""The web console in a real browser: headless Chromium (through chromedriver) against `ocrbatch
serve` as a process, over local directories, with the emulator as the OCR API (a General and a
Template domain). Logging in, creating batches through the forms (and a refusal shown beside its
field), searching, editing, deleting through the pop-up, watching a run's progress bar fill without
a reload, a failure and its retry, the result viewer's boxes, and the language switch.

One serve, one emulator and one browser serve the whole module; every test makes batches of its
own (each General batch on a General domain of its own, since a General domain has one batch), so
the tests hold in any order and on any xdist worker. Each page's screenshot goes to
`tests/.screenshots/`, and the server time of every page visited (its `Server-Timing`) is printed
in the terminal summary.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from fixtures.browser import (
    BROWSER_TIMEOUT_S,
    SERVER_TIMING_PROPERTY,
    BackgroundLoop,
    ServerTimings,
    chrome,
)
from fixtures.process import TOKEN, ServedProcess, serve_process
from fixtures.samples import png
from fixtures.sealing import SECRET_KEY
from fixtures.worker import FAST_WORKER
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from ocrbatch.emulator.faults import FaultSettings
from ocrbatch.emulator.server import Emulator
from ocrbatch.emulator.settings import EmulatorSettings

T = TypeVar("T")
SCREENSHOTS: Final = Path(__file__).parent / ".screenshots"
START_TIMEOUT_S: Final = 60.0  # for the emulator and serve to start, or stop
PASS_TIMEOUT_S: Final = 30.0  # for the worker to finish a pass over a few documents
# Each OCR call takes 150 ms and the run domain sends 2 at a time, so the run's 40 documents take
# about 3 s: long enough for the page's 1 s polls to see it half done.
CALL_LATENCY_MS: Final = 150
RUN_CAP: Final = 2
RUN_DOCUMENTS: Final = 40
# The General domains, one per test that makes a General batch; and the Template domain.
GENERAL_DOMAINS: Final = ("general-form", "general-run", "general-done")
TEMPLATE_DOMAIN: Final = "templates"
BROKEN_JPEG: Final = b"\xff\xd8\xff\xe0 not really a JPEG"


# -- the world: emulator, serve, browser ---------------------------------------------------------


@dataclass
class World:
    """`ocrbatch serve` at `url` over local directories: batches may use `data` only."""

    url: str
    data: Path
    outside: Path  # a directory outside the locations open to the console
    served: ServedProcess
    loop: BackgroundLoop

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call of serve's HTTP API with its token; the parsed JSON answer."""
        request = urllib.request.Request(  # noqa: S310  (the URL is serve's own, on loopback)
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=BROWSER_TIMEOUT_S) as response:  # noqa: S310
            return json.load(response)

    def create_batch(self, **spec: Any) -> str:
        """A batch made over the API (for the tests that are not about the create form); its id."""
        return str(self.api("POST", "/api/v1/batches", spec)["id"])

    def template_batch(self, name: str, *, inputs: Path | None = None, results: Path | None = None) -> str:
        """A Template batch on template 101 made over the API, reading `inputs` (a fresh
        `{name}-in` directory by default) into `results` (`{name}-out`); its id."""
        return self.create_batch(
            name=name,
            domain=TEMPLATE_DOMAIN,
            template_ids=[101],
            input_path=str(inputs or self.directory(f"{name}-in")),
            result_path=str(results or self.data / f"{name}-out"),
        )

    def directory(self, name: str) -> Path:
        """A fresh, existing directory under `data`."""
        path = self.data / name
        path.mkdir(parents=True)
        return path

    def wait_for_pass(self, batch_id: str, done: int) -> dict[str, Any]:
        """The worker's log line of a pass over batch `batch_id` that finished `done` items."""
        return self.loop.run(
            self.served.wait_for_log(
                "batch.pass_done", batch_id=batch_id, done=done, timeout_s=PASS_TIMEOUT_S
            ),
            PASS_TIMEOUT_S + 5,
            f"no pass over batch {batch_id} finishing {done} item(s)",
        )


def serve_config(path: Path, *, emulator: Emulator, control: Path, data: Path) -> Path:
    """Settings for serve: local control and data directories, the emulator's General endpoint as
    every General domain and its Template endpoint as the Template domain, the API open to `data`."""
    settings = emulator.settings
    lines = ["[storage]", f"control_path = {json.dumps(str(control))}"]
    for name in GENERAL_DOMAINS:
        lines += [
            f"[domains.{name}]",
            'kind = "general"',
            f'invoke_url = "{emulator.url}/general"',
            f'secret = "{settings.general_secret.get_secret_value()}"',
            f"max_concurrent_calls = {RUN_CAP}",
            "table_extraction = true",
        ]
    lines += [
        f"[domains.{TEMPLATE_DOMAIN}]",
        'kind = "template"',
        f'invoke_url = "{emulator.url}/infer"',
        f'secret = "{settings.template_secret.get_secret_value()}"',
        f"max_concurrent_calls = {RUN_CAP}",
        "[worker]",
        *(f"{key} = {value}" for key, value in FAST_WORKER.items()),
        "[webhook]",
        'allow_networks = ["127.0.0.0/8"]',
        "[security]",
        f'secret_key = "{SECRET_KEY}"',
        "[api]",
        "port = 0",
        f'token = "{TOKEN}"',
        f"allowed_locations = [{json.dumps(str(data))}]",
        "[logging]",
        'format = "json"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The emulator (150 ms a call) and `ocrbatch serve`, on an event loop in a thread of their own
    so that they answer while a test blocks in the browser; stopped after the module (serve must
    exit 0)."""
    root = tmp_path_factory.mktemp("console-browser")
    control, data, outside = root / "control", root / "data", root / "outside"
    for directory in (control, data, outside):
        directory.mkdir()
    loop = BackgroundLoop()
    stack = AsyncExitStack()

    async def start() -> ServedProcess:
        emulator = await stack.enter_async_context(
            Emulator(
                EmulatorSettings(max_concurrent_calls=8, faults=FaultSettings(latency_ms=CALL_LATENCY_MS))
            )
        )
        config = serve_config(root / "ocrbatch.toml", emulator=emulator, control=control, data=data)
        return await stack.enter_async_context(serve_process(config))

    try:
        served = loop.run(start(), START_TIMEOUT_S, "the emulator and serve did not start")
        yield World(served.url, data, outside, served, loop)
    finally:
        loop.run(stack.aclose(), START_TIMEOUT_S, "serve and the emulator did not stop")
        loop.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module, asking for English pages."""
    browser = chrome(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.quit()


def _left_the_page(driver: WebDriver) -> bool:
    try:
        return bool(driver.execute_script("return window.__leaving === undefined;"))
    except WebDriverException:  # the old document is going away while the script runs
        return False


class Console:
    """The console in the browser: pages opened and forms submitted, each page's server time
    recorded, and bounded waits that fail saying what did not happen."""

    def __init__(self, driver: WebDriver, world: World, timings: ServerTimings) -> None:
        self.driver = driver
        self.world = world
        self.timings = timings

    def open(self, path: str, page: str) -> None:
        """Load `path` of serve (the browser waits for the load) and record its server time."""
        self.driver.get(self.world.url + path)
        self.loaded(page)

    def loaded(self, page: str) -> None:
        self.wait(
            lambda driver: driver.execute_script("return document.readyState") == "complete",
            f"the {page} page did not finish loading",
        )
        self.timings.record(self.driver, page)

    def click_to(self, element: WebElement, page: str) -> None:
        """Click `element` and wait for the page it leads to: a new document, whose window no
        longer has the mark set on this one (chromedriver's staleness checks can fail with "Node
        with given id does not belong to the document" while the old page goes)."""
        self.driver.execute_script("window.__leaving = true;")
        element.click()
        self.wait(_left_the_page, f"clicking did not lead to the {page} page")
        self.loaded(page)

    def wait(self, condition: Callable[[WebDriver], T | None], message: str) -> T:
        """What `condition` returns once it is truthy; fails after `BROWSER_TIMEOUT_S` with
        "`message` within ... s"."""
        wait = WebDriverWait(self.driver, BROWSER_TIMEOUT_S, poll_frequency=0.05)
        found: T = wait.until(
            lambda driver: condition(driver) or False, message=f"{message} within {BROWSER_TIMEOUT_S:g} s"
        )
        return found

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text.strip()

    def fill(self, css: str, value: str) -> None:
        element = self.find(css)
        element.clear()
        element.send_keys(value)

    def lang(self) -> str:
        return str(self.find("html").get_attribute("lang"))

    def login(self) -> None:
        """Log in with serve's token from the login form; lands on the batch list."""
        self.open("/console/login", "login")
        self.fill("#token", TOKEN)
        self.click_to(self.find("#login-form button[type=submit]"), "list")
        assert self.driver.current_url == self.world.url + "/console/batches"

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        assert self.driver.save_screenshot(str(SCREENSHOTS / name)), f"no screenshot {name}"

    def row(self, batch_id: str) -> WebElement:
        return self.find(f'tr.batch-row[data-batch-id="{batch_id}"]')

    def definition(self) -> dict[str, str]:
        """The batch page's "Batch information": each term with its value."""
        return {
            term.text.strip(): value.text.strip()
            for term, value in zip(
                self.find_all("[aria-labelledby=definition-title] dt"),
                self.find_all("[aria-labelledby=definition-title] dd"),
                strict=True,
            )
        }

    def progress(self) -> dict[str, Any] | None:
        """The progress section's attributes and its bar's value and max, read in one script (the
        section is replaced every second); None while it has no bar."""
        state: dict[str, Any] | None = self.driver.execute_script(
            """
            const section = document.getElementById('progress');
            const bar = document.getElementById('progress-bar');
            if (!section || !bar) { return null; }
            return {percent: section.dataset.percent, done: Number(section.dataset.done),
                    total: Number(section.dataset.total), value: bar.value, max: bar.max,
                    calls: document.getElementById('calls').textContent.trim()};
            """
        )
        return state


@pytest.fixture
def console(driver: WebDriver, world: World, request: pytest.FixtureRequest) -> Iterator[Console]:
    """The module's browser with no cookies (logged out, no language chosen); the pages this test
    visits and their server times go to the terminal summary."""
    driver.get(world.url + "/console/login")  # cookies are deleted for the page's site
    driver.delete_all_cookies()
    timings = ServerTimings()
    yield Console(driver, world, timings)
    request.node.user_properties.append((SERVER_TIMING_PROPERTY, timings.rows))


def unique(name: str) -> str:
    """`name` with a suffix no other batch of the run has."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- login and language -------------------------------------------------------------------------


def test_login_refuses_a_wrong_token_and_accepts_the_api_token(console: Console) -> None:
    """A page asked for without a session shows the login form; a wrong token is refused with a
    message on the form; serve's API token leads to the page first asked for, the batch list."""
    console.open("/console/batches", "login (redirected)")
    assert console.driver.current_url.startswith(console.world.url + "/console/login?next=")
    assert console.find_all("#login-form")
    assert not console.find_all("#login-message")

    console.fill("#token", "not-the-token")
    console.click_to(console.find("#login-form button[type=submit]"), "login refused")
    assert console.text("#login-message") == "That is not the API token."
    assert console.find("#token").get_attribute("value") == ""
    console.screenshot("console-login-refused.png")

    console.fill("#token", TOKEN)
    console.click_to(console.find("#login-form button[type=submit]"), "list")
    assert console.driver.current_url == console.world.url + "/console/batches"
    assert console.find_all("#batch-table")
    assert not console.find_all("#login-message")
    assert console.find_all("#create-batch")


def test_language_switch_and_korean_browsers(console: Console, tmp_path: Path) -> None:
    """An English browser gets English pages; the header's switch turns them Korean (and back) on
    the same page; a browser that ranks Korean first gets Korean pages before any switch."""
    console.login()
    assert console.lang() == "en"
    assert console.text("#create-batch") == "Create batch"
    assert console.text("#lang-switch") == "한국어"

    console.click_to(console.find("#lang-switch"), "list (Korean)")
    assert console.lang() == "ko"
    assert console.driver.current_url == console.world.url + "/console/batches"
    assert console.text("#create-batch") == "배치 생성"
    assert console.text("#delete-batch") == "배치 삭제"
    assert console.text("#lang-switch") == "English"
    console.screenshot("console-list-ko.png")

    console.click_to(console.find("#lang-switch"), "list (English again)")
    assert console.lang() == "en"
    assert console.text("#create-batch") == "Create batch"

    korean = chrome(tmp_path / "korean-profile", accept_languages="ko-KR,ko,en;q=0.5")
    try:
        korean.get(console.world.url + "/console/login")
        assert korean.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ko"
        assert korean.find_element(By.TAG_NAME, "h1").text.strip() == "로그인"
        assert korean.find_element(By.ID, "lang-switch").text.strip() == "English"
    finally:
        korean.quit()


# -- the create and edit forms --------------------------------------------------------------------


def test_create_a_general_and_a_template_batch_through_the_forms(console: Console) -> None:
    """The form shows only the chosen domain's kind of options; a General batch (language, tables,
    Excel, a webhook) and a Template batch (template ids) are created, and their batch pages and
    list rows show the Domain information they were given."""
    world = console.world
    general_in, general_out = (
        world.directory(unique("form-general-in")),
        world.data / unique("form-general-out"),
    )
    template_in, template_out = (
        world.directory(unique("form-template-in")),
        world.data / unique("form-tpl-out"),
    )
    general_name, template_name = unique("general"), unique("template")
    console.login()

    console.click_to(console.find("#create-batch"), "create form")
    assert console.text("h1") == "Create batch"
    Select(console.find("#domain")).select_by_value("general-form")
    console.wait(
        lambda _: console.find("#template-options").is_displayed() is False,
        "the template options stayed shown",
    )
    assert console.find("#general-options").is_displayed()
    console.fill("#name", general_name)
    Select(console.find("#language")).select_by_value("ja")
    console.find("#table_extraction").click()
    console.find("#file_format-xls").click()
    console.fill("#input_path", str(general_in))
    console.fill("#result_path", str(general_out))
    console.find("#advanced summary").click()
    console.wait(lambda _: console.find("#webhook_url").is_displayed(), "the advanced settings did not open")
    console.find("#webhook_enabled").click()
    console.fill("#webhook_url", "http://127.0.0.1:9/hooks/general")
    console.fill("#webhook_secret", "webhook-secret-for-the-form")
    console.click_to(console.find("#submit"), "batch (created)")

    assert console.text("#flash") == "Batch created. The worker picks it up on its next pass."
    assert general_name in console.text("h1")
    assert console.definition() == {
        "Domain": "general-form",
        "Language": "ja",
        "Table extraction": "on",
        "File format": "xls",
        "Long images": "off",
        "Input file storage path": str(general_in),
        "Result file storage path": str(general_out),
    }
    assert "http://127.0.0.1:9/hooks/general" in console.text("#outbox")
    general_id = console.driver.current_url.rsplit("/", 1)[-1].split("?")[0]

    console.open("/console/batches/new", "create form")
    Select(console.find("#domain")).select_by_value(TEMPLATE_DOMAIN)
    console.wait(
        lambda _: console.find("#general-options").is_displayed() is False, "the General options stayed shown"
    )
    assert console.find("#template-options").is_displayed()
    console.fill("#name", template_name)
    console.fill("#template_ids", "101, 102")
    console.fill("#input_path", str(template_in))
    console.fill("#result_path", str(template_out))
    console.click_to(console.find("#submit"), "batch (created)")
    assert console.definition() == {
        "Domain": TEMPLATE_DOMAIN,
        "Templates": "101, 102",
        "File format": "json",
        "Input file storage path": str(template_in),
        "Result file storage path": str(template_out),
    }
    template_id = console.driver.current_url.rsplit("/", 1)[-1].split("?")[0]

    console.open("/console/batches", "list")
    general_row, template_row = console.row(general_id), console.row(template_id)
    assert general_row.get_attribute("data-name") == general_name
    general_info = [
        item.text.strip() for item in general_row.find_elements(By.CSS_SELECTOR, "td.domain-info .info-item")
    ]
    assert general_info == ["Language: ja", "Table extraction: on", "File format: xls", "Long images: off"]
    template_info = [
        item.text.strip() for item in template_row.find_elements(By.CSS_SELECTOR, "td.domain-info .info-item")
    ]
    assert template_info == ["Templates: 101, 102", "File format: json"]
    assert template_row.find_element(By.CSS_SELECTOR, "a.batch-link").text == template_name


def test_a_refused_batch_shows_the_error_beside_its_field_and_keeps_the_values(console: Console) -> None:
    """An input path outside the locations open to the console is refused: the summary above the
    form, the rule beside the input path (in its field, linked by aria-describedby), nothing
    beside the other fields, and every typed value still in the form."""
    world = console.world
    name, outside = unique("refused"), str(world.outside / "inbox")
    result_path = str(world.data / unique("refused-out"))
    console.login()
    console.open("/console/batches/new", "create form")
    Select(console.find("#domain")).select_by_value(TEMPLATE_DOMAIN)
    console.fill("#name", name)
    console.fill("#template_ids", "101")
    console.fill("#input_path", outside)
    console.fill("#result_path", result_path)
    console.click_to(console.find("#submit"), "create form (refused)")

    assert console.find("#form-errors").is_displayed()
    error = console.find("#input_path-error")
    assert "allowed_locations" in error.text
    assert console.driver.execute_script(
        "return document.getElementById('input_path-error').closest('div.field')"
        " === document.getElementById('input_path').closest('div.field');"
    )
    field = console.find("#input_path")
    assert field.get_attribute("aria-invalid") == "true"
    assert "input_path-error" in str(field.get_attribute("aria-describedby")).split()
    assert [element.get_attribute("id") for element in console.find_all("p.field-error")] == [
        "input_path-error"
    ]
    assert console.find("#name").get_attribute("value") == name
    assert console.find("#input_path").get_attribute("value") == outside
    assert console.find("#result_path").get_attribute("value") == result_path
    assert console.find("#template_ids").get_attribute("value") == "101"
    assert Select(console.find("#domain")).first_selected_option.get_attribute("value") == TEMPLATE_DOMAIN
    console.screenshot("console-form-refused.png")

    console.open(f"/console/batches?search={name}", "list (searched)")
    assert not console.find_all("tr.batch-row")


# -- search, edit, delete ------------------------------------------------------------------------


def test_search_shows_only_the_batches_whose_name_matches(console: Console) -> None:
    """Searching the list keeps only the rows whose name contains the text (and keeps the text in
    the box); a search matching nothing says so."""
    world = console.world
    tag = uuid.uuid4().hex[:8]
    names = [f"{tag}-invoice-a", f"{tag}-invoice-b", f"{tag}-receipt"]
    for name in names:
        world.template_batch(name)
    console.login()
    assert {row.get_attribute("data-name") for row in console.find_all("tr.batch-row")} >= set(names)

    console.fill("#search", f"{tag}-invoice")
    console.click_to(console.find("#search-form button[type=submit]"), "list (searched)")
    assert (
        sorted(str(row.get_attribute("data-name")) for row in console.find_all("tr.batch-row")) == names[:2]
    )
    assert console.find("#search").get_attribute("value") == f"{tag}-invoice"
    assert not console.find_all("#empty")
    console.screenshot("console-list.png")

    console.fill("#search", f"{tag}-nothing")
    console.click_to(console.find("#search-form button[type=submit]"), "list (no match)")
    assert not console.find_all("tr.batch-row")
    assert console.text("#empty") == f"No batch name contains “{tag}-nothing”."


def test_settings_edit_shows_after_saving(console: Console) -> None:
    """[Settings] opens the form filled with the batch as it is; a change saved there shows on the
    batch page and in the list."""
    world = console.world
    name = unique("editable")
    batch_id = world.template_batch(name)
    console.login()
    console.click_to(console.row(batch_id).find_element(By.CSS_SELECTOR, "a.settings-link"), "settings form")
    assert console.text("h1") == "Batch settings"
    assert console.find("#name").get_attribute("value") == name
    assert console.find("#template_ids").get_attribute("value") == "101"
    assert console.find("#file_format-json").is_selected()

    console.fill("#template_ids", "101, 102")
    console.find("#file_format-xls").click()
    console.click_to(console.find("#submit"), "batch (saved)")
    assert console.text("#flash") == "Batch settings saved."
    definition = console.definition()
    assert definition["Templates"] == "101, 102"
    assert definition["File format"] == "xls"

    console.open("/console/batches", "list")
    info = [item.text.strip() for item in console.row(batch_id).find_elements(By.CSS_SELECTOR, ".info-item")]
    assert info == ["Templates: 101, 102", "File format: xls"]


def test_delete_through_the_pop_up_keeps_the_result_files(console: Console) -> None:
    """[Delete batch] opens a pop-up saying results are kept; Cancel keeps the batch; OK deletes
    it: its row is gone, the list says so, and the result file it wrote is still on disk."""
    world = console.world
    name = unique("doomed")
    inputs, results = world.directory(f"{name}-in"), world.data / f"{name}-out"
    (inputs / "form.png").write_bytes(png(800, 600))
    batch_id = world.template_batch(name, inputs=inputs, results=results)
    world.wait_for_pass(batch_id, done=1)
    result_file = results / "form.png.json"
    written = result_file.read_bytes()
    console.login()

    def dialog_open() -> bool:
        return bool(console.driver.execute_script("return document.getElementById('delete-dialog').open;"))

    console.find(f"#select-{batch_id}").click()
    console.find("#delete-batch").click()
    console.wait(lambda _: dialog_open(), "the delete pop-up did not open")
    dialog = console.find("#delete-dialog")
    assert "Delete the selected batches? Their result files are kept in the result storage." in dialog.text
    assert console.find("#delete-ok").is_displayed()
    console.find("#delete-cancel").click()
    console.wait(lambda _: not dialog_open(), "Cancel did not close the pop-up")
    assert console.row(batch_id).is_displayed()

    console.find("#delete-batch").click()
    console.wait(lambda _: dialog_open(), "the delete pop-up did not open again")
    console.screenshot("console-delete-dialog.png")
    console.click_to(console.find("#delete-ok"), "list (deleted)")
    assert console.text("#flash") == "1 batch(es) deleted. Their results are kept."
    assert not console.find_all(f'tr.batch-row[data-batch-id="{batch_id}"]')
    assert result_file.read_bytes() == written


# -- a run, its failures and its results ---------------------------------------------------------


def test_the_progress_bar_fills_without_a_reload(console: Console) -> None:
    """On the batch page, the progress section (refreshed by htmx every second) follows a run of
    40 documents: the bar is seen part full, then full with every document counted, and the page
    was never reloaded."""
    world = console.world
    name = unique("run")
    inputs, staging = world.directory(f"{name}-in"), world.directory(f"{name}-staging")
    batch_id = world.create_batch(
        name=name, domain="general-run", input_path=str(inputs), result_path=str(world.data / f"{name}-out")
    )
    console.login()
    console.open(f"/console/batches/{batch_id}", "batch")
    console.driver.execute_script("window.__noReload = 1;")
    # The documents arrive whole (renamed into place), so no pass reads a half-written file.
    for index in range(RUN_DOCUMENTS):
        (staging / f"page-{index:02}.png").write_bytes(png(600 + index, 400))
    for document in staging.iterdir():
        document.rename(inputs / document.name)

    def part_full(_: WebDriver) -> dict[str, Any] | None:
        state = console.progress()
        return state if state is not None and 0 < state["value"] < state["max"] else None

    def all_counted(_: WebDriver) -> dict[str, Any] | None:
        state = console.progress()
        return state if state is not None and state["done"] == RUN_DOCUMENTS else None

    under_way = console.wait(part_full, "the progress bar was never seen part full")
    # The total is what the pass has listed so far, which grows as it lists.
    assert 0 < under_way["done"] < under_way["total"] <= RUN_DOCUMENTS
    assert int(under_way["calls"]) >= 1
    done = console.wait(all_counted, f"the progress did not reach {RUN_DOCUMENTS} documents")
    assert done["percent"] == "100.0"
    assert done["value"] == done["max"] == RUN_DOCUMENTS
    assert done["total"] == RUN_DOCUMENTS
    assert console.text("#progress-percent") == "100.0 %"
    assert console.driver.execute_script("return window.__noReload;") == 1

    console.screenshot("console-batch.png")


def test_pause_estimate_and_resume(console: Console) -> None:
    """[Pause] holds the batch's new documents back; [Estimate] counts them in place, without a
    reload and without sending anything; [Resume] lets the worker read them, and the progress
    section counts them as they are done."""
    world = console.world
    name = unique("paused")
    inputs, staging = world.directory(f"{name}-in"), world.directory(f"{name}-staging")
    batch_id = world.template_batch(name, inputs=inputs)
    console.login()
    console.open(f"/console/batches/{batch_id}", "batch")
    console.click_to(console.find("#pause"), "batch (paused)")
    assert console.text("#flash") == "Paused: items in flight finish, the others wait."
    assert console.text("#batch-status") == "Paused"
    assert console.find_all("#resume")
    assert not console.find_all("#pause")
    for document in ("first.png", "second.png"):
        (staging / document).write_bytes(png(700, 500 + len(document)))
        (staging / document).rename(inputs / document)

    console.driver.execute_script("window.__noReload = 1;")
    console.find("#estimate").click()
    console.wait(
        lambda _: console.find_all("#estimate-result #estimate-figures"), "the estimate did not come"
    )
    assert console.text("#estimate-inputs") == "2"
    assert console.text("#estimate-pages") == "2"
    assert console.text("#estimate-calls") == "2"
    assert console.text("#estimate-refused") == "0"
    assert console.text("#estimate-items") == "2"
    assert console.driver.execute_script("return window.__noReload;") == 1
    assert not (world.data / f"{name}-out" / "first.png.json").exists()  # nothing was sent
    console.screenshot("console-estimate.png")

    console.click_to(console.find("#resume"), "batch (resumed)")
    assert console.text("#flash") == "Resumed."
    assert console.find_all("#pause")
    console.wait(
        lambda _: (state := console.progress()) is not None and state["done"] == 2,
        "the resumed batch did not get its 2 documents done",
    )


@dataclass(frozen=True)
class FinishedBatches:
    """A General batch that read two images and a broken JPEG, and a Template batch that read one
    image; both passes are over."""

    general_id: str
    general_results: Path
    template_id: str
    template_results: Path


@pytest.fixture(scope="module")
def finished(world: World) -> FinishedBatches:
    """`FinishedBatches`, made over the API and waited for in serve's log."""
    general_in, template_in = world.directory("done-general-in"), world.directory("done-template-in")
    (general_in / "letter.png").write_bytes(png(640, 480))
    (general_in / "receipt.png").write_bytes(png(480, 900))
    (general_in / "broken.jpg").write_bytes(BROKEN_JPEG)
    (template_in / "form.png").write_bytes(png(800, 600))
    general_results, template_results = world.data / "done-general-out", world.data / "done-template-out"
    general_id = world.create_batch(
        name="done-general",
        domain="general-done",
        table_extraction=True,
        input_path=str(general_in),
        result_path=str(general_results),
    )
    template_id = world.template_batch("done-template", inputs=template_in, results=template_results)
    world.wait_for_pass(general_id, done=3)
    world.wait_for_pass(template_id, done=1)
    return FinishedBatches(general_id, general_results, template_id, template_results)


def test_a_failure_opens_from_the_failures_list_and_retries(
    console: Console, finished: FinishedBatches
) -> None:
    """The broken JPEG's failure is listed (and found by its reason); its page shows the stored
    record; [Retry] removes it with a message, and the worker sends the item again."""
    world = console.world
    record = json.loads(
        (finished.general_results / "_failed" / "broken.jpg.json").read_text(encoding="utf-8")
    )
    console.login()
    console.open(f"/console/batches/{finished.general_id}", "batch")
    console.click_to(console.find("#failures-link"), "failures")
    assert [row.get_attribute("data-key") for row in console.find_all("tr.failure-row")] == ["broken.jpg"]

    console.fill("#reason", "JPG")
    console.click_to(console.find("#failure-filter button[type=submit]"), "failures (filtered)")
    assert [row.get_attribute("data-key") for row in console.find_all("tr.failure-row")] == ["broken.jpg"]
    console.fill("#reason", "no such reason")
    console.click_to(console.find("#failure-filter button[type=submit]"), "failures (no match)")
    assert not console.find_all("tr.failure-row")
    assert console.text("#no-failures") == "No failure records."

    console.open(f"/console/batches/{finished.general_id}/failures", "failures")
    console.click_to(console.find("tr.failure-row a.failure-link"), "failure")
    assert console.text("#failure-key") == "broken.jpg"
    assert console.text("#failure-reason") == record["message"]
    assert "cannot be read" in record["message"]
    assert console.text("#failure-code") == (record["code"] or "-")
    assert console.text("#failure-attempts") == str(record["attempts"])
    assert console.text("#failure-retryable") == ("yes" if record["retryable"] else "no")
    console.screenshot("console-failure.png")

    console.click_to(console.find("#retry-one"), "failures (retried)")
    assert console.driver.current_url.startswith(
        f"{world.url}/console/batches/{finished.general_id}/failures"
    )
    assert console.text("#flash") == "1 failed item(s) will be sent again."
    world.wait_for_pass(finished.general_id, done=1)  # sent again (and refused again)


def usable_polygons(fields: list[dict[str, Any]]) -> int:
    """How many fields have a polygon to draw: 3 vertices or more, each with numeric x and y."""

    def usable(field: dict[str, Any]) -> bool:
        vertices = field.get("boundingPoly", {}).get("vertices", [])
        return len(vertices) >= 3 and all(
            isinstance(vertex.get("x"), int | float) and isinstance(vertex.get("y"), int | float)
            for vertex in vertices
        )

    return sum(1 for field in fields if usable(field))


def test_the_viewer_draws_a_box_per_field_and_links_them(console: Console, finished: FinishedBatches) -> None:
    """The results list links each result; the viewer draws one box per field of the stored answer
    that has a polygon, lists every field and table, highlights a field's box while the field is
    pointed at, and names the template of a Template result."""
    world = console.world
    console.login()
    console.open(f"/console/batches/{finished.general_id}/results", "results")
    assert [row.get_attribute("data-key") for row in console.find_all("tr.result-row")] == [
        "letter.png",
        "receipt.png",
    ]
    assert len(console.find_all("tr.result-row a.download-link")) == 2
    console.click_to(console.find('tr.result-row[data-key="letter.png"] a.result-link'), "viewer")

    answer = json.loads((finished.general_results / "letter.png.json").read_text(encoding="utf-8"))
    image = answer["images"][0]
    drawn = usable_polygons(image["fields"])
    assert drawn > 0
    viewer = console.find("section#result-viewer")
    assert viewer.get_attribute("data-box-count") == str(drawn)
    assert viewer.get_attribute("data-field-count") == str(len(image["fields"]))
    assert len(console.find_all("svg.viewer-image polygon.box")) == drawn
    assert len(console.find_all("ol.fields > li.field")) == len(image["fields"])
    assert len(console.find_all("table.ocr-table")) == len(image.get("tables", []))
    assert console.find_all("svg.viewer-image image")
    status = console.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.querySelector('svg.viewer-image image').getAttribute('href'))"
        ".then((response) => done(response.status + ' ' + response.headers.get('content-type')));"
    )
    assert status == "200 image/png"
    assert console.find("#download").get_attribute("href")

    field = console.find_all("ol.fields > li.field")[1]
    index = field.get_attribute("data-index")
    box = console.find(f'polygon.box[data-index="{index}"]')
    assert "highlight" not in str(box.get_attribute("class"))
    ActionChains(console.driver).move_to_element(field).perform()
    console.wait(
        lambda _: "highlight" in str(box.get_attribute("class")),
        "pointing at a field did not highlight its box",
    )
    assert "highlight" in str(field.get_attribute("class"))
    others = console.find_all("polygon.box.highlight")
    assert [other.get_attribute("data-index") for other in others] == [index]
    console.screenshot("console-viewer.png")

    console.open(f"/console/batches/{finished.template_id}/result?key=form.png", "viewer (template)")
    template = json.loads((finished.template_results / "form.png.json").read_text(encoding="utf-8"))
    matched = template["images"][0]["matchedTemplate"]
    assert console.text("#template-name") == f"Template: {matched['name']} ({matched['id']})"
    fields = template["images"][0]["fields"]
    assert len(console.find_all("ol.fields > li.field")) == len(fields)
    assert len(console.find_all("polygon.box")) == usable_polygons(fields)
    assert world.url in console.driver.current_url


def test_the_batch_page_downloads_the_export(
    console: Console, finished: FinishedBatches, tmp_path: Path
) -> None:
    """[Download] on the batch page saves the batch's table: the chosen format, the failed
    items when ticked, a row per document in key order."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    console.driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    console.login()
    console.open(f"/console/batches/{finished.general_id}", "batch")
    assert not console.find_all("#export-confidence")  # a Template batch's option
    Select(console.find("#export-format")).select_by_value("csv")
    console.find("#export-failed").click()
    console.find("#export-download").click()

    saved = downloads / "done-general.csv"
    console.wait(lambda _: saved.exists() and not list(downloads.glob("*.crdownload")), "no export was saved")
    rows = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8-sig"))))
    assert [row[:3] for row in rows] == [
        ["source_key", "result_key", "status"],
        ["broken.jpg", "_failed/broken.jpg.json", "failed"],
        ["letter.png", "letter.png.json", "succeeded"],
        ["receipt.png", "receipt.png.json", "succeeded"],
    ]
