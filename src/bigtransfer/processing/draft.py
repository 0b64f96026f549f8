"""Decoding a JPEG no larger than its resize needs: libjpeg scales it by 1/2, 1/4 or 1/8 while decoding
(`Image.draft`), so a 9000×9000 photo for a 224-px model costs 1.3 megapixels instead of 81."""

from __future__ import annotations

from typing import Any

from PIL import ExifTags, Image, JpegImagePlugin

from .decoding import damage_named
from .transform import resize_output_size

# Both decoded sides stay at least twice the resize target, so the antialiased resize after the draft still
# averages several pixels into each: close to resizing the full decode (see `draft_for`).
DRAFT_MARGIN = 2
QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations shown turned by 90°: the stored width is the shown height


def draft_for(opened: Image.Image, size: dict[str, int], name: Any) -> None:
    """Set an opened JPEG (header only, nothing decoded) to decode at the smallest scale that keeps both sides
    at least `DRAFT_MARGIN` times what `size` resizes it to; `opened.size` becomes the size decoding gives.
    Other formats are left as they are. On photos, the resized pixels stay within a few 8-bit levels of those
    resized from the full decode (README, "Untrusted input and faults"). Damaged EXIF is a ValueError naming
    `name`, as `decoded` names damaged pixels."""
    if not isinstance(opened, JpegImagePlugin.JpegImageFile):
        return
    with damage_named(name):
        turned = opened.getexif().get(ExifTags.Base.Orientation, 1) in QUARTER_TURNS
    shown_height, shown_width = (opened.width, opened.height) if turned else (opened.height, opened.width)
    height, width = resize_output_size(shown_height, shown_width, size)
    if turned:
        height, width = width, height
    opened.draft(opened.mode, (DRAFT_MARGIN * width, DRAFT_MARGIN * height))
