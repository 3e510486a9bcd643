"""The local OCR engine: Tesseract behind the CLOVA General contract (SPEC §9).

Each page of an upload (up to 10 PDF pages or TIFF frames, as the service reads per call) is
decoded in a worker thread (`engine_pages`) and recognised by one `tesseract` process that writes
TSV; at most `processes` pages (one per CPU core by default) are decoded and recognised at once,
each process with `OMP_THREAD_LIMIT=1` so that it uses one core. The pages of one call are read
one after another, so no more processes run than calls are in flight. TSV words become fields:
one per word with its box and confidence (0..1), `lineBreak` on the last word of each line.

Languages: the request's `lang` picks Tesseract's models (`tesseract_languages`); without one,
Korean, the service's default. Korean uses the `kor` model first (it keeps syllables of a word
together) and then the Hangul script model, which reads Korean mixed with Latin text best, plus
`eng` for Latin text on every page. Tables are not detected: Tesseract has no table model, so the
engine never claims tables (the emulator answers 0028 to requests that ask for them).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ocrbatch.clova.contract import (
    MAX_PDF_PAGES_PER_CALL,
    BoundingPoly,
    ConvertedImageInfo,
    OcrField,
    OcrImage,
    ValidationResult,
)
from ocrbatch.clova.documents import is_long_image, page_sizes
from ocrbatch.clova.recognition import RecognitionFailed
from ocrbatch.engine.pages import PageImage, page_image

DEFAULT_LANGUAGE = "ko"  # what the service recognises when a request names no language
LATIN_MODEL = "eng"
# Per CLOVA language, groups of Tesseract models: the first installed model of each group is used.
# Debian installs the Hangul script model as `Hangul`, Homebrew's tesseract-lang as `script/Hangul`.
LANGUAGE_MODELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ko": (("kor",), ("Hangul", "script/Hangul")),
    "ja": (("jpn",),),
    "zh-TW": (("chi_tra",),),
}
PACKAGE_HINTS = {
    "ko": "tesseract-ocr-kor and tesseract-ocr-script-hang",
    "ja": "tesseract-ocr-jpn",
    "zh-TW": "tesseract-ocr-chi-tra",
}
_DETECT_TIMEOUT_S = 30
_WORD_LEVEL = "5"
# Characters of scripts written without spaces between words: CJK punctuation, kana, Han
# ideographs (with extensions and compatibility forms), full-width forms.
_UNSPACED_SCRIPT = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\uff01-\uff60\U00020000-\U0003ffff]"
)


class EngineUnavailable(Exception):
    """Tesseract cannot be run (not installed, not executable, or answering nonsense)."""


class TesseractSettings(BaseModel):
    """How the engine runs Tesseract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = "tesseract"
    processes: int | None = Field(default=None, ge=1)  # None: one per CPU core
    timeout_s: float = Field(default=300.0, gt=0)  # per page; a stuck process is killed
    # 4: a single column of text of variable sizes. On rendered Korean it reads every line where
    # the fully automatic mode (3) drops whole lines; tables and receipts read row by row.
    page_segmentation_mode: int = Field(default=4, ge=1, le=13)


@dataclass(frozen=True)
class TesseractInstall:
    """What `tesseract --version` and `--list-langs` said."""

    command: str
    version: str
    languages: frozenset[str]


def detect_tesseract(command: str = "tesseract") -> TesseractInstall:
    """Find Tesseract and its installed language data; `EngineUnavailable` says what is missing.
    Blocking: runs two short processes."""
    path = shutil.which(command)
    if path is None:
        raise EngineUnavailable(
            f"{command!r} was not found: install Tesseract (Debian/Ubuntu: apt-get install tesseract-ocr "
            "tesseract-ocr-kor tesseract-ocr-jpn tesseract-ocr-chi-tra tesseract-ocr-script-hang; "
            "macOS: brew install tesseract tesseract-lang)"
        )
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=_DETECT_TIMEOUT_S, check=True
        )
        listing = subprocess.run(
            [path, "--list-langs"], capture_output=True, text=True, timeout=_DETECT_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineUnavailable(f"{path} cannot be run: {exc}") from None
    first_line = (version.stdout or version.stderr).strip().splitlines()[:1]
    # The first line of --list-langs names the data directory; every other line is one model.
    languages = frozenset(line.strip() for line in listing.stdout.splitlines()[1:] if line.strip())
    if not first_line or not languages:
        raise EngineUnavailable(f"{path} does not look like Tesseract, or has no language data")
    return TesseractInstall(command=path, version=first_line[0], languages=languages)


def missing_languages(installed: frozenset[str]) -> list[str]:
    """The CLOVA languages the installed data cannot read, each with the package that adds it."""
    missing = []
    for code, groups in LANGUAGE_MODELS.items():
        if not any(model in installed for model in groups[0]):
            missing.append(f"{code} ({PACKAGE_HINTS[code]})")
    return missing


def tesseract_languages(lang: str | None, installed: frozenset[str]) -> str:
    """Tesseract's `-l` value for a request's `lang` (`ko`, `ja`, `zh-TW`, comma-joined, or None).
    Raises `RecognitionFailed` when a requested language has no installed data."""
    models: list[str] = []
    for code in (part.strip() for part in (lang or DEFAULT_LANGUAGE).split(",")):
        groups = LANGUAGE_MODELS.get(code)
        if groups is None:
            raise RecognitionFailed("FAILURE", f"language {code!r} is not supported by the engine")
        found = [next((model for model in group if model in installed), None) for group in groups]
        if found[0] is None:
            raise RecognitionFailed(
                "FAILURE",
                f"the engine has no Tesseract language data for {code} (install {PACKAGE_HINTS[code]})",
            )
        models.extend(model for model in found if model is not None)
    if LATIN_MODEL in installed:
        models.append(LATIN_MODEL)
    return "+".join(dict.fromkeys(models))


@dataclass
class _Word:
    line: tuple[str, ...]  # page, block, paragraph and line numbers
    text: str
    box: tuple[int, int, int, int]  # left, top, right, bottom
    confidence: float


def fields_from_tsv(tsv: str, width: int, height: int) -> list[OcrField]:
    """CLOVA fields from Tesseract's TSV: one per recognised word, in reading order, boxes kept
    inside the `width` x `height` page, `lineBreak` true on the last word of each line.

    Chinese and Japanese are written without spaces, yet Tesseract cuts their runs into pieces
    at arbitrary points: adjacent pieces of a line that meet between two Han/Kana characters are
    one field (boxes united, the lowest confidence kept). Korean keeps Tesseract's words, since
    its spaces carry meaning."""
    words: list[_Word] = []
    for word in _tsv_words(tsv):
        previous = words[-1] if words else None
        if previous and previous.line == word.line and _joins(previous.text, word.text):
            previous.text += word.text
            previous.box = (
                min(previous.box[0], word.box[0]),
                min(previous.box[1], word.box[1]),
                max(previous.box[2], word.box[2]),
                max(previous.box[3], word.box[3]),
            )
            previous.confidence = min(previous.confidence, word.confidence)
        else:
            words.append(word)
    return [
        OcrField(
            value_type="ALL",
            bounding_poly=_poly(word.box, width, height),
            infer_text=word.text,
            infer_confidence=round(word.confidence, 4),
            type="NORMAL",
            line_break=index + 1 == len(words) or words[index + 1].line != word.line,
        )
        for index, word in enumerate(words)
    ]


def _tsv_words(tsv: str) -> Iterator[_Word]:
    lines = tsv.splitlines()
    if not lines:
        return
    columns = {name: index for index, name in enumerate(lines[0].split("\t"))}
    for row in lines[1:]:
        cells = row.split("\t", len(columns) - 1)
        if len(cells) != len(columns) or cells[columns["level"]] != _WORD_LEVEL:
            continue
        text = cells[columns["text"]].strip()
        if not text:
            continue
        left, top = int(cells[columns["left"]]), int(cells[columns["top"]])
        right, bottom = left + int(cells[columns["width"]]), top + int(cells[columns["height"]])
        yield _Word(
            line=tuple(cells[columns[name]] for name in ("page_num", "block_num", "par_num", "line_num")),
            text=text,
            box=(left, top, right, bottom),
            confidence=min(1.0, max(0.0, float(cells[columns["conf"]]) / 100)),
        )


def _joins(before: str, after: str) -> bool:
    return bool(_UNSPACED_SCRIPT.match(before[-1]) and _UNSPACED_SCRIPT.match(after[0]))


def _poly(box: tuple[int, int, int, int], width: int, height: int) -> BoundingPoly:
    """The box's four corners, clockwise from top left, moved inside the page where Tesseract
    overshoots it."""
    left, top, right, bottom = box
    left, right = (min(max(0, value), width) for value in (left, right))
    top, bottom = (min(max(0, value), height) for value in (top, bottom))
    corners = ((left, top), (right, top), (right, bottom), (left, bottom))
    return BoundingPoly.model_validate({"vertices": [{"x": x, "y": y} for x, y in corners]})


def cpu_cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class TesseractEngine:
    """Recognises uploads with Tesseract, at most `processes` pages at once."""

    def __init__(self, install: TesseractInstall, settings: TesseractSettings) -> None:
        self.install = install
        self.settings = settings
        self.processes = settings.processes or cpu_cores()
        self._slots = asyncio.Semaphore(self.processes)
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        self.running = 0
        self.peak_running = 0
        self.pages = 0

    async def recognise(
        self, *, name: str, data: bytes, image_format: str, lang: str | None
    ) -> list[OcrImage]:
        """One CLOVA image per page. Raises `UnreadableDocument` for bytes that are not the declared
        format, `RecognitionFailed` when Tesseract cannot read a page or lacks the language data."""
        sizes = await asyncio.to_thread(page_sizes, data, image_format, max_pages=MAX_PDF_PAGES_PER_CALL)
        languages = tesseract_languages(lang, self.install.languages)
        images = []
        for page_index in range(len(sizes)):
            async with self._slots:
                self.running += 1
                self.peak_running = max(self.peak_running, self.running)
                try:
                    page = await asyncio.to_thread(page_image, data, image_format, page_index)
                    tsv = await self._tesseract(page, languages, page_index)
                finally:
                    self.running -= 1
            self.pages += 1
            images.append(_page_result(name, page_index, page, fields_from_tsv(tsv, page.width, page.height)))
        return images

    async def _tesseract(self, page: PageImage, languages: str, page_index: int) -> str:
        args = [self.install.command, "stdin", "stdout", "-l", languages]
        args += ["--psm", str(self.settings.page_segmentation_mode)]
        if page.dpi is not None:
            args += ["--dpi", str(page.dpi)]
        process = await asyncio.create_subprocess_exec(
            *args,
            "tsv",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                stdout, stderr = await process.communicate(page.pgm)
        except TimeoutError:
            raise RecognitionFailed(
                "ERROR", f"recognising page {page_index + 1} took longer than {self.settings.timeout_s:g} s"
            ) from None
        finally:
            if process.returncode is None:  # timed out or cancelled: no process outlives its call
                process.kill()
                await process.wait()
        if process.returncode != 0:
            reason = (stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
            raise RecognitionFailed("FAILURE", f"Tesseract could not read page {page_index + 1}: {reason}")
        return stdout.decode("utf-8", "replace")

    def stats(self) -> dict[str, Any]:
        return {
            "name": "tesseract",
            "version": self.install.version,
            "languages": sorted(self.install.languages),
            "processes": self.processes,
            "running": self.running,
            "peak_running": self.peak_running,
            "pages": self.pages,
        }


def _page_result(name: str, page_index: int, page: PageImage, fields: list[OcrField]) -> OcrImage:
    return OcrImage(
        uid=uuid.uuid4().hex,
        name=name,
        infer_result="SUCCESS",
        message="SUCCESS",
        validation_result=ValidationResult(result="NO_REQUESTED"),
        converted_image_info=ConvertedImageInfo(
            width=page.width,
            height=page.height,
            page_index=page_index,
            long_image=is_long_image(page.width, page.height),
        ),
        fields=fields,
    )
