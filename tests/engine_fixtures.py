"""Helpers for the local engine's tests: Tesseract and the CJK fonts, text comparison, a fake
`tesseract` executable."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from ocrbatch.clova.contract import OcrImage
from ocrbatch.demo.samples import LANGUAGES, find_font
from ocrbatch.engine.tesseract import EngineUnavailable, detect_tesseract, missing_languages


def require_tesseract_and_fonts() -> None:
    """Skip unless Tesseract with every language and the CJK fonts are installed; in CI (`CI=true`),
    where `.ci/run` installs them, fail instead, so the engine's tests cannot silently vanish."""
    try:
        install = detect_tesseract()
    except EngineUnavailable as exc:
        _unavailable(str(exc))
    missing = missing_languages(install.languages)
    if missing:
        _unavailable(f"Tesseract has no data for {', '.join(missing)}")
    if any(find_font(lang) is None for lang in LANGUAGES):
        _unavailable("no Noto Sans CJK font: install fonts-noto-cjk")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI installs it in .ci/run, so the engine's tests must run)")
    pytest.skip(reason)


def character_error_rate(expected: str, recognised: str) -> float:
    """Edit distance between the two texts, whitespace ignored, over the expected length."""
    reference, hypothesis = "".join(expected.split()), "".join(recognised.split())
    previous = list(range(len(hypothesis) + 1))
    for row, wanted in enumerate(reference, start=1):
        current = [row]
        for column, got in enumerate(hypothesis, start=1):
            current.append(
                min(previous[column] + 1, current[column - 1] + 1, previous[column - 1] + (wanted != got))
            )
        previous = current
    return previous[-1] / max(1, len(reference))


def text_lines(image: OcrImage) -> list[str]:
    """The recognised lines of one page: fields joined by spaces, split where `lineBreak` is set."""
    lines: list[str] = []
    words: list[str] = []
    for field in image.fields or []:
        words.append(field.infer_text)
        if field.line_break:
            lines.append(" ".join(words))
            words = []
    if words:
        lines.append(" ".join(words))
    return lines


FAKE_TESSERACT = """\
#!{python}
# A stand-in for tesseract: lists {languages}; "recognises" by echoing what it was run with.
import os, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("tesseract 5.0.0-fake")
    sys.exit(0)
if args == ["--list-langs"]:
    print('List of available languages in "/fake/tessdata/" ({count}):')
    print("\\n".join({languages!r}))
    sys.exit(0)
data = sys.stdin.buffer.read()
if {fail!r}:
    sys.stderr.write("Estimating resolution as 70\\nError in pixReadMem: Unknown format\\n")
    sys.exit(1)
option = lambda name: args[args.index(name) + 1] if name in args else "-"
header = "level page_num block_num par_num line_num word_num left top width height conf text"
rows = [
    header.replace(" ", "\\t"),
    "1\\t1\\t0\\t0\\t0\\t0\\t0\\t0\\t640\\t480\\t-1\\t",
    "5\\t1\\t1\\t1\\t1\\t1\\t10\\t10\\t60\\t20\\t96.5\\tOMP=" + os.environ.get("OMP_THREAD_LIMIT", "-"),
    "5\\t1\\t1\\t1\\t1\\t2\\t80\\t10\\t60\\t20\\t90\\tl=" + option("-l"),
    "5\\t1\\t1\\t1\\t2\\t1\\t10\\t40\\t60\\t20\\t80\\tpsm=" + option("--psm"),
    "5\\t1\\t1\\t1\\t2\\t2\\t80\\t40\\t60\\t20\\t70\\tdpi=" + option("--dpi"),
    "5\\t1\\t1\\t1\\t2\\t3\\t150\\t40\\t9000\\t20\\t70\\tbytes=" + str(len(data)),
]
print("\\n".join(rows))
"""


def fake_tesseract(folder: Path, *, languages: tuple[str, ...] = ("eng", "kor"), fail: bool = False) -> str:
    """Write the fake `tesseract` into `folder` and return its path."""
    path = folder / "tesseract"
    path.write_text(
        FAKE_TESSERACT.format(
            python=sys.executable, languages=list(languages), count=len(languages), fail=fail
        ),
        encoding="utf-8",
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)
