"""Generated benign test material: images (gradients, shapes, noise) and messages.

Every image is made from a seed, so "the same photo" can be made again and different
seeds give visibly different images.
"""

from __future__ import annotations

import io
from email.message import EmailMessage
from email.policy import SMTP

import numpy as np
from PIL import Image, ImageDraw


def photo_like(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    """A smooth, textured RGB image with shapes: enough structure for PDQ quality 100."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.5, 4.0, 2)
        phase = rng.uniform(0, 2 * np.pi)
        base[..., c] = 127 + 100 * np.sin(fx * xx / width * 2 * np.pi + phase) * np.cos(
            fy * yy / height * 2 * np.pi
        )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1 = int(rng.integers(x0 + 10, min(width, x0 + width // 2) + 1))
        y1 = int(rng.integers(y0 + 10, min(height, y0 + height // 2) + 1))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    noise = rng.normal(0, 4, (height, width, 3))
    arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def image_bytes(img: Image.Image, fmt: str = "JPEG", **save_args: object) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def jpeg(seed: int, width: int = 640, height: int = 480, quality: int = 90) -> bytes:
    return image_bytes(photo_like(seed, width, height), "JPEG", quality=quality)


def png(seed: int, width: int = 640, height: int = 480) -> bytes:
    return image_bytes(photo_like(seed, width, height), "PNG")


def message(
    *,
    subject: str = "test",
    body: str = "Hello.\n",
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
    sender: str = "alice@example.org",
    to: str = "bob@example.net",
) -> EmailMessage:
    """A message; attachments are (filename, mime type "type/subtype", bytes)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash((subject, body))) % 10**12}@test.example>"
    msg.set_content(body)
    for filename, mime, data in attachments:
        maintype, subtype = mime.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def message_bytes(msg: EmailMessage) -> bytes:
    """Wire form: CRLF line ends, as an MTA sends it."""
    return msg.as_bytes(policy=SMTP)
