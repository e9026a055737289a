"""The root of lrt's exception hierarchy.

Every error lrt raises on purpose derives from :class:`LrtError`, so the CLI can
print a one-line message (no traceback) for anything a user can fix, and callers
of the Python API can catch one class.  CouchDB errors live in :mod:`lrt.couch`
(``CouchError`` and its subclasses) and derive from ``LrtError`` too.
"""
from typing import Optional


class LrtError(Exception):
    """Base class of every error lrt raises deliberately."""

    #: exit code the CLI uses when this error reaches it
    exit_code = 1


class ConfigError(LrtError):
    """A configuration, token config or file list is invalid.

    ``path`` and ``line`` point at the offending input where known, so the
    message can name them; nothing has been written when this is raised.
    """

    exit_code = 2

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "") + ": "
        super().__init__(where + message)


class TransitionError(LrtError):
    """A token state change that the state machine does not allow."""

    exit_code = 3


class StagingError(LrtError):
    """Tape staging, stage-in or stage-out failed.

    ``per_file`` maps each failing URL to its reason, so the token can keep them.
    ``code`` is an :mod:`lrt.errorcodes` number.
    """

    def __init__(self, message: str, code: int, per_file: Optional[dict] = None):
        super().__init__(message)
        self.code = code
        self.per_file = dict(per_file or {})


class StageInError(StagingError):
    """Copying inputs into the work directory failed (or a checksum did not match)."""


class StageOutError(StagingError):
    """Uploading or committing outputs failed."""
