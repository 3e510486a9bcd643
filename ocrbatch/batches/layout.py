"""What ocrbatch writes in a batch's result location, and where: every key is built, and read
back, here.

For input key K: its result is `K` + the file format's suffix, its failure record
`_failed/K.json`. `_report.json` holds the batch's figures, `_outbox/` its webhook outbox (whose
inner layout is `webhooks.outbox`'s). An input whose own result or record would land on these
names is reserved: it is skipped, never processed.
"""

from __future__ import annotations

from typing import Final

FAILED_PREFIX: Final = "_failed/"
FAILURE_SUFFIX: Final = ".json"
OUTBOX_PREFIX: Final = "_outbox/"
REPORT_KEY: Final = "_report.json"
# The subtrees of ocrbatch's own objects, beside the results.
OWN_PREFIXES: Final = (FAILED_PREFIX, OUTBOX_PREFIX)
# A batch's `file_format` -> the suffix of its results.
RESULT_SUFFIX: Final[dict[str, str]] = {"json": ".json", "xls": ".xlsx"}


def result_key(key: str, suffix: str) -> str:
    """Where the result of input `key` lives, for results ending in `suffix`."""
    return key + suffix


def failure_record_key(key: str) -> str:
    """Where the failure record of input `key` lives."""
    return FAILED_PREFIX + key + FAILURE_SUFFIX


def failed_input_key(record_key: str) -> str | None:
    """The input a failure record is about; None when `record_key` is not a failure record's."""
    if not record_key.startswith(FAILED_PREFIX) or not record_key.endswith(FAILURE_SUFFIX):
        return None
    key = record_key[len(FAILED_PREFIX) : len(record_key) - len(FAILURE_SUFFIX)]
    return key or None


def is_own_object(key: str) -> bool:
    """True for ocrbatch's own objects (report, failure records, outbox), which are not results."""
    return key == REPORT_KEY or key.startswith(OWN_PREFIXES)


def is_reserved(key: str) -> bool:
    """True for input keys whose result or failure record would land on ocrbatch's own names."""
    return key == REPORT_KEY or any(key.split("/", 1)[0] == prefix[:-1] for prefix in OWN_PREFIXES)
