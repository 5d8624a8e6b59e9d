"""Typographic image rendering: a phrase drawn as black text on a white canvas.

This is how FigStep and MM-SafetyBench's TYPO variant put a request *inside* the
image. Rendering is deterministic (PIL's built-in bitmap font, fixed canvas) so a
build is byte-identical across machines.
"""

from __future__ import annotations

import io
import textwrap

from PIL import Image, ImageDraw, ImageFont

CANVAS = (336, 336)


def _font(size: int) -> ImageFont.ImageFont:
    # load_default(size=...) gives the bundled scalable font when FreeType is present;
    # it ships inside Pillow, so no system font is needed and output does not vary by host.
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow without a scalable default
        return ImageFont.load_default()


def render_text_image(text: str, size: tuple[int, int] = CANVAS, font_size: int = 22, width_chars: int = 24) -> Image.Image:
    """Render ``text`` wrapped onto a white RGB canvas and return the PIL image."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    lines = textwrap.wrap(" ".join(text.split()), width=width_chars) or [""]
    y = 12
    for line in lines:
        draw.text((12, y), line, fill="black", font=font)
        y += int(font_size * 1.35)
        if y > size[1] - font_size:
            break
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as PNG bytes with fixed settings (no timestamps, deterministic)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def render_numbered_list_image(
    text: str,
    items: int = 3,
    size: tuple[int, int] = CANVAS,
    font_size: int = 22,
    width_chars: int = 24,
) -> Image.Image:
    """Render ``text`` as a heading followed by an empty numbered list ``1.`` .. ``items.``.

    This is the FigStep-style typographic layout: the instruction lives only in the
    image and the model is asked to fill in the empty items. The list always fits:
    a heading too long for the canvas is cut (with an ellipsis) to leave room for it.
    """
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    step = int(font_size * 1.35)
    list_height = items * step * 2
    max_heading_lines = max(1, (size[1] - 24 - list_height) // step)
    lines = textwrap.wrap(" ".join(text.split()), width=width_chars) or [""]
    if len(lines) > max_heading_lines:
        lines = lines[:max_heading_lines]
        lines[-1] = lines[-1][: max(0, width_chars - 3)].rstrip() + "..."
    y = 12
    for line in lines:
        draw.text((12, y), line, fill="black", font=font)
        y += step
    y += step // 2
    for number in range(1, items + 1):
        draw.text((12, y), f"{number}.", fill="black", font=font)
        y += step * 2
    return image
