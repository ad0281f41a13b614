"""Uploaded images: the body size limit and decoding bytes into RGB pixels, with reasons.

:class:`BodyLimit` is ASGI middleware that answers 413 as soon as a request declares, or
streams, more bytes than the limit, before the body is buffered. :func:`decode_image` turns
JPEG/PNG/BMP/WebP/TIFF bytes into the RGB ``uint8 [H, W, 3]`` array that
:func:`cvkit.images.read_image` gives for the same file (both use OpenCV's decoder), and names
what is wrong otherwise. OpenCV decodes a cut JPEG without an error (the lost part comes out
grey), so JPEG and PNG files are first checked for their end marker.
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from cvkit.errors import ImageError

_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_PNG_END = b"IEND\xaeB`\x82"


def image_format(data: bytes) -> str:
    """The image format named by ``data``'s first bytes.

    Raises:
        ImageError: empty data or no known signature (JPEG, PNG, BMP, WebP, TIFF).
    """
    if not data:
        raise ImageError("empty body: send the image bytes (JPEG or PNG)")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES.items():
        if data.startswith(signature):
            return name
    raise ImageError(
        f"not an image: the body starts with {data[:8]!r}, not a JPEG, PNG, BMP, WebP or TIFF "
        "signature"
    )


def decode_image(data: bytes) -> np.ndarray:
    """Image file bytes → RGB ``uint8 [H, W, 3]`` (gray is repeated, alpha dropped).

    Raises:
        ImageError: not an image, a truncated JPEG/PNG, or bytes OpenCV cannot decode.
    """
    kind = image_format(data)
    if kind == "JPEG" and data.rfind(b"\xff\xd9") < 2:
        raise ImageError("corrupt JPEG: no end-of-image marker (the file is truncated)")
    if kind == "PNG" and _PNG_END not in data[-64:]:
        raise ImageError("corrupt PNG: no IEND chunk (the file is truncated)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"corrupt {kind}: OpenCV could not decode the {len(data)} bytes")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class BodyTooLarge(Exception):
    """A request body grew past the limit while it was being read."""


def too_large(max_bytes: int) -> str:
    """The error message of a 413: a body over ``max_bytes``."""
    return f"request body larger than the limit of {max_bytes} bytes"


class BodyLimit:
    """ASGI middleware: 413 for HTTP bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send) -> None:
        body = json.dumps({"error": too_large(self.max_bytes)}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
