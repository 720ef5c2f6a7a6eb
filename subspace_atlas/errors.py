"""The one exception type the CLI turns into a clear one-line error."""


class AtlasError(Exception):
    """Bad input or an unmet request: the message names the file (and tensor) at fault."""
