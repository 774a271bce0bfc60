"""Output bytes, as they arrive in chunks, cut into text lines."""

from __future__ import annotations

import codecs


class LineSplitter:
    """Decodes UTF-8 across chunk boundaries (invalid bytes replaced) and yields whole
    lines without their ``\\n`` or ``\\r\\n`` (a terminal's line ending)."""

    __slots__ = ("_decoder", "_partial")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes."""
        text = self._partial + self._decoder.decode(data)
        *lines, self._partial = text.split("\n")
        return [line.removesuffix("\r") for line in lines]

    def flush(self) -> list[str]:
        """The unterminated last line, if any, once the output has ended."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [rest.removesuffix("\r")] if rest else []
