"""The one exception type the CLI turns into a clear one-line error, and helpers that keep it one line."""


class AtlasError(Exception):
    """Bad input or an unmet request: the message names the file (and tensor) at fault."""


def brief(value: object, limit: int = 60) -> str:
    """A value's repr cut to ``limit`` characters: a malformed field can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (Parquet, JSON, a terminal): no lone surrogates, which a
    non-UTF-8 file name (decoded with surrogateescape) or a ``\\ud800`` JSON escape leave behind."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_line(err: BaseException) -> str:
    """An exception's first message line (or its type), for wrapping a library's multi-line error in one line."""
    return (str(err).strip().splitlines() or [""])[0] or type(err).__name__
