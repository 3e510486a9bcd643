"""What the service bills: one unit per page, and a long image one unit per 2,000 px of its long
side (the console's long-image warning)."""

from __future__ import annotations

import math

from ocrbatch.clova.contract import OcrImage
from ocrbatch.clova.documents import is_long_image

LONG_IMAGE_BILLING_PX = 2000  # long images are billed per 2,000 px of their long side


def page_units(width_px: int, height_px: int) -> int:
    """What the service bills for one page: 1, or a long image per 2,000 px of its long side."""
    if is_long_image(width_px, height_px):
        return math.ceil(max(width_px, height_px) / LONG_IMAGE_BILLING_PX)
    return 1


def billable_units(images: list[OcrImage]) -> int:
    """What the service bills for these recognised pages."""
    units = 0
    for image in images:
        info = image.converted_image_info
        units += page_units(info.width, info.height) if info is not None else 1
    return units
