"""The compiled row loop of a masked COPY (`_rowmask.c`, which documents the arguments)."""

from collections.abc import Callable
from typing import Any

def mask_rows(
    block: bytes,
    width: int,
    fields: list[tuple[int, dict[bytes, bytes] | None, Callable[[bytes], bytes],
                      Callable[[str], str | None] | None]],
    jsons: list[tuple[int, dict[bytes, Any], Callable[[list[bytes]], Any], Callable[[bytes], Any],
                      bool, int, int]],
    search: list[int],
    flat: Callable[[bytes], bytes],
    format_error: type[Exception],
    where: list[int],
    /,
) -> tuple[bytes, list[list[bytes]], list[list[bytes]], int]: ...

class Needles:
    """The leak search's whole values and anchor words, looked up in C."""

    def __init__(self, whole: list[bytes], words: list[bytes], /) -> None: ...
    def scan(self, values: list[bytes], /) -> tuple[list[int], list[int]]: ...
