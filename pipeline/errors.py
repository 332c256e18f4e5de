"""The one family of user-facing errors.

A `UserError` is bad input or a state the user fixes (a config key, a missing file, a stale
artifact, a locked store): the command line prints its message alone, on one line where it can,
and exits non-zero. Anything else is a bug and keeps its traceback. Each subclass also derives
from the built-in exception callers would naturally catch (ValueError, FileNotFoundError).
"""
from __future__ import annotations

import errno

# OSErrors that are the machine's state, not a bug: reported in one line naming the path
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}


class UserError(Exception):
    """Something the user fixes; the message names the file, row or key and what to do."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used."""


class InputError(UserError, ValueError):
    """Bad dataset input (labels, manifests, media); names file and line or frame."""


class MissingInput(InputError, FileNotFoundError):
    """A dataset file or folder the config names does not exist."""


class MissingArtifact(UserError, FileNotFoundError):
    """An artifact a stage needs does not exist; the message says which command makes it."""


class StaleArtifact(UserError):
    """An artifact exists but was made from other inputs, settings or code than asked for."""


class NonFinite(UserError, ArithmeticError):
    """A NaN or Inf training loss or prediction: nothing is recorded; the message says what to try."""


class StoreLocked(UserError):
    """Another run writes (or reads) what this run needs."""


class StoreWriteError(UserError):
    """The store cannot be written (full disk, read-only, permissions); names the path."""


def storage_message(e: BaseException) -> str | None:
    """One line for a full disk, a read-only store or missing permissions; None otherwise."""
    if not isinstance(e, OSError) or e.errno not in _STORAGE_ERRNOS:
        return None
    where = e.filename or "the store"
    return (f"{_STORAGE_ERRNOS[e.errno]} writing {where}; free space or fix permissions, then "
            "run the command again (finished work is kept)")


# An object store's client errors that are the user's setup, by class name (botocore, aiohttp:
# pipeline imports neither): the endpoint does not answer, or no credentials were found.
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError"}


def object_store_message(e: BaseException) -> str | None:
    """One line for an object store that cannot be reached or signed in to; None otherwise."""
    seen = e
    while seen is not None:
        name = type(seen).__name__
        if name in _UNREACHABLE:
            return (f"cannot reach the object store ({seen}); check AWS_ENDPOINT_URL (or the "
                    "`store` URL) and the network, then run the command again (finished work "
                    "is kept)")
        if name in _NO_CREDENTIALS:
            return (f"no credentials for the object store ({seen}); set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or an AWS profile), then run the command again")
        seen = seen.__cause__ or seen.__context__
    return None


# Errors worth retrying: the storage or network may answer next time (a flaky NFS or object
# store mount, a dropped connection); a missing file, a full disk or permissions never will.
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.ECONNREFUSED, errno.ESTALE, errno.EHOSTUNREACH, errno.ENETUNREACH}


def is_transient(e: BaseException) -> bool:
    """An I/O error that a retry may get past (see _TRANSIENT_ERRNOS)."""
    if isinstance(e, (TimeoutError, ConnectionError, BlockingIOError, InterruptedError)):
        return True
    return isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS
