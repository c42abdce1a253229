"""py7zr writers that keep members in memory, each capped at its declared size."""

from __future__ import annotations

from py7zr.io import Py7zIO, WriterFactory


class CappedIO(Py7zIO):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.written = 0
        self.overflow = False

    def write(self, s: bytes | bytearray) -> int:
        room = self.limit - self.written
        if len(s) > room:
            self.overflow = True
            s = s[: max(room, 0)]
        self.parts.append(bytes(s))
        self.written += len(s)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.written


class CappedFactory(WriterFactory):
    """Products by member name; a member may not grow past its declared size."""

    def __init__(self, declared: dict[str, int]) -> None:
        self.declared = declared
        self.products: dict[str, CappedIO] = {}

    def create(self, filename: str) -> Py7zIO:
        product = CappedIO(self.declared.get(filename, 0))
        self.products[filename] = product
        return product

    def data(self, filename: str) -> bytes | None:
        """The member's bytes; None if it tried to grow past its declared size."""
        product = self.products.get(filename)
        if product is None:
            return b""
        if product.overflow:
            return None
        return b"".join(product.parts)
