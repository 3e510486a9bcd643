"""What `ocrbatch emulator` (and `ocrbatch engine`) can be told, and the recogniser that follows.

`engine` picks what answers calls: "synthetic" (deterministic results, General and Template) or
"tesseract" (the local engine, General only, no tables). `recogniser_for` is the one place that
turns the setting into a `Recogniser`; the server talks to that interface only.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ocrbatch.clova.recognition import Recogniser
from ocrbatch.emulator.faults import FaultSettings
from ocrbatch.emulator.synthetic import SyntheticRecogniser
from ocrbatch.engine.recogniser import TesseractRecogniser
from ocrbatch.engine.tesseract import TesseractSettings

Engine = Literal["synthetic", "tesseract"]
# Each engine's recogniser class, so that the settings know what it can do before one is built.
_RECOGNISERS: Final[dict[str, type[SyntheticRecogniser] | type[TesseractRecogniser]]] = {
    "synthetic": SyntheticRecogniser,
    "tesseract": TesseractRecogniser,
}


class EmulatorSettings(BaseModel):
    """Everything `ocrbatch emulator` can be told; limits apply to each domain separately."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    general_secret: SecretStr = SecretStr("emulator-general-secret")
    template_secret: SecretStr = SecretStr("emulator-template-secret")
    # `X-OCR-ADMIN-TOKEN` of the /_emulator/* routes; None: a random one per start (`Emulator.admin_token`).
    admin_token: SecretStr | None = None
    general_domain_id: str = "1001"
    template_domain_id: str = "1002"
    max_concurrent_calls: int = Field(default=5, ge=1)
    calls_per_second: float | None = Field(default=None, gt=0)
    quota: int | None = Field(default=None, ge=0)
    table_extraction: bool = True  # with an engine that detects no tables: off unless set, and never on
    template_ids: tuple[int, ...] = (101, 102)
    faults: FaultSettings = FaultSettings()
    engine: Engine = "synthetic"
    tesseract: TesseractSettings = TesseractSettings()

    @model_validator(mode="before")
    @classmethod
    def _engine_tables(cls, data: Any) -> Any:  # Any: the raw input, before pydantic has read it
        """An engine that detects no tables (Tesseract) has its table switch off by default; turning
        it on would promise tables that never come."""
        if not isinstance(data, dict):
            return data
        engine = data.get("engine", "synthetic")
        recogniser = _RECOGNISERS.get(engine) if isinstance(engine, str) else None
        if recogniser is None or recogniser.detects_tables:  # an unknown engine fails its own check
            return data
        if data.get("table_extraction"):
            raise ValueError(f"the {engine} engine does not detect tables: leave table_extraction off")
        return {**data, "table_extraction": False}


def recogniser_for(settings: EmulatorSettings) -> Recogniser:
    """What answers the emulator's calls, as `settings.engine` says (not started yet)."""
    if settings.engine == "tesseract":
        return TesseractRecogniser(settings.tesseract)
    return SyntheticRecogniser()
