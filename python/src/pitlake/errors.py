"""Typed exceptions for what the server (or the client) refuses.

Every error of a call through this package is a :class:`PitlakeError`; its subclass says why,
after the gRPC status the server answered with (docs/operations.md, "Status codes"), and its
message is the server's own sentence::

    try:
        fs.sql("SELECT * FROM salaries").to_arrow()
    except pitlake.errors.PermissionDenied as e:
        print(e)   # user `bob` may not read table `salaries`: none of its roles grants …

ADBC's Flight SQL driver folds several gRPC codes into one ADBC status (RESOURCE_EXHAUSTED and
INTERNAL both become ``INTERNAL``; ABORTED and FAILED_PRECONDITION both ``UNKNOWN``), so the
class is chosen from the gRPC code itself: the driver's vendor code when it sets one, else the
code it names at the end of its message (``"… (ResourceExhausted; Prepare)"``), and the ADBC
status only when neither is there.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Type

import adbc_driver_manager
import pyarrow as pa

__all__ = [
    "PitlakeError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DeadlineExceeded",
    "Cancelled",
    "ReproductionMismatch",
    "from_adbc",
    "translate",
]


class PitlakeError(Exception):
    """Base class of every error this package raises.

    Attributes:
        message: the server's message (or the client's, for a check made before sending).
        grpc_code: the gRPC status name (``"PERMISSION_DENIED"`` …), or None for errors the
            client found itself.
    """

    grpc_code_default: Optional[str] = None

    def __init__(self, message: str, *, grpc_code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code if grpc_code is not None else self.grpc_code_default


class InvalidArgument(PitlakeError, ValueError):
    """A statement that does not parse or plan, wrong parameters, data errors (casts, division
    by zero), a statement over the server's size or nesting bounds; also arguments this client
    refuses before sending anything (it is a ValueError too)."""

    grpc_code_default = "INVALID_ARGUMENT"


class NotFound(PitlakeError, LookupError):
    """A table, version, prepared statement or registry object that does not exist, or that
    this user may not see (the server answers both alike)."""

    grpc_code_default = "NOT_FOUND"


class AlreadyExists(PitlakeError):
    """``CREATE`` of a table or registry object that exists, defined otherwise."""

    grpc_code_default = "ALREADY_EXISTS"


class PermissionDenied(PitlakeError):
    """A grant is missing (the message names the object), or a ticket is not this user's."""

    grpc_code_default = "PERMISSION_DENIED"


class Unauthenticated(PitlakeError):
    """No credential, a wrong password, or an unknown, expired or altered token."""

    grpc_code_default = "UNAUTHENTICATED"


class ResourceExhausted(PitlakeError):
    """Out of memory after spilling, no query slot in time, a locked-out user or address,
    uploads past their limits."""

    grpc_code_default = "RESOURCE_EXHAUSTED"


class FailedPrecondition(PitlakeError):
    """A table whose log cannot be read."""

    grpc_code_default = "FAILED_PRECONDITION"


class Aborted(PitlakeError):
    """A write that lost to a concurrent writer; nothing was written, run it again."""

    grpc_code_default = "ABORTED"


class Unimplemented(PitlakeError):
    """SQL or a Flight SQL call the server does not serve."""

    grpc_code_default = "UNIMPLEMENTED"


class Internal(PitlakeError):
    """A failure inside the server or its libraries (see the server's log)."""

    grpc_code_default = "INTERNAL"


class Unavailable(PitlakeError):
    """The server cannot be reached, is shutting down, or its storage is unreachable; retry,
    perhaps on another replica."""

    grpc_code_default = "UNAVAILABLE"


class DeadlineExceeded(PitlakeError):
    """The statement ran past the server's ``--query-timeout`` (or the client's own)."""

    grpc_code_default = "DEADLINE_EXCEEDED"


class Cancelled(PitlakeError):
    """The call was cancelled."""

    grpc_code_default = "CANCELLED"


class ReproductionMismatch(PitlakeError):
    """:meth:`pitlake.Client.reproduce` found that a training set is not what its manifest
    records; ``differences`` lists each finding as a sentence."""

    def __init__(self, message: str, differences: "list[str]") -> None:
        super().__init__(message)
        self.differences = differences


# gRPC status codes by number (the driver's vendor code), and the classes they raise.
_GRPC_NAMES: Dict[int, str] = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}

_CLASSES: Dict[str, Type[PitlakeError]] = {
    "CANCELLED": Cancelled,
    "UNKNOWN": Internal,
    "INVALID_ARGUMENT": InvalidArgument,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "PERMISSION_DENIED": PermissionDenied,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "FAILED_PRECONDITION": FailedPrecondition,
    "ABORTED": Aborted,
    "OUT_OF_RANGE": InvalidArgument,
    "UNIMPLEMENTED": Unimplemented,
    "INTERNAL": Internal,
    "UNAVAILABLE": Unavailable,
    "DATA_LOSS": Internal,
    "UNAUTHENTICATED": Unauthenticated,
}

# What an ADBC status means when the driver said nothing more precise.
_FROM_ADBC_STATUS: Dict[int, str] = {
    int(adbc_driver_manager.AdbcStatusCode.NOT_IMPLEMENTED): "UNIMPLEMENTED",
    int(adbc_driver_manager.AdbcStatusCode.NOT_FOUND): "NOT_FOUND",
    int(adbc_driver_manager.AdbcStatusCode.ALREADY_EXISTS): "ALREADY_EXISTS",
    int(adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT): "INVALID_ARGUMENT",
    int(adbc_driver_manager.AdbcStatusCode.INVALID_STATE): "FAILED_PRECONDITION",
    int(adbc_driver_manager.AdbcStatusCode.INVALID_DATA): "INVALID_ARGUMENT",
    int(adbc_driver_manager.AdbcStatusCode.INTEGRITY): "INTERNAL",
    int(adbc_driver_manager.AdbcStatusCode.INTERNAL): "INTERNAL",
    int(adbc_driver_manager.AdbcStatusCode.IO): "UNAVAILABLE",
    int(adbc_driver_manager.AdbcStatusCode.CANCELLED): "CANCELLED",
    int(adbc_driver_manager.AdbcStatusCode.TIMEOUT): "DEADLINE_EXCEEDED",
    int(adbc_driver_manager.AdbcStatusCode.UNAUTHENTICATED): "UNAUTHENTICATED",
    int(adbc_driver_manager.AdbcStatusCode.UNAUTHORIZED): "PERMISSION_DENIED",
}

# The Go driver ends its messages with "(<grpc Code>; <what it was doing>)", the code spelled
# as Go's codes.Code prints it.
_GO_CODE_NAMES = {
    "Canceled": "CANCELLED",
    "Unknown": "UNKNOWN",
    "InvalidArgument": "INVALID_ARGUMENT",
    "DeadlineExceeded": "DEADLINE_EXCEEDED",
    "NotFound": "NOT_FOUND",
    "AlreadyExists": "ALREADY_EXISTS",
    "PermissionDenied": "PERMISSION_DENIED",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION",
    "Aborted": "ABORTED",
    "OutOfRange": "OUT_OF_RANGE",
    "Unimplemented": "UNIMPLEMENTED",
    "Internal": "INTERNAL",
    "Unavailable": "UNAVAILABLE",
    "DataLoss": "DATA_LOSS",
    "Unauthenticated": "UNAUTHENTICATED",
}
_TRAILER = re.compile(r"\s\((" + "|".join(_GO_CODE_NAMES) + r"); [^()]*(?:\([^()]*\)[^()]*)*\)")
_ADBC_PREFIX = re.compile(r"^(?:[A-Z_]+: )?(?:\[FlightSQL\] )?")
_VENDOR_SUFFIX = re.compile(r"\. Vendor code: -?\d+$")


def _grpc_code(error: adbc_driver_manager.Error, text: str) -> str:
    vendor = getattr(error, "vendor_code", None)
    if isinstance(vendor, int) and vendor in _GRPC_NAMES:
        return _GRPC_NAMES[vendor]
    named = list(_TRAILER.finditer(text))
    if named:
        return _GO_CODE_NAMES[named[-1].group(1)]
    status = getattr(error, "status_code", None)
    if status is not None and int(status) in _FROM_ADBC_STATUS:
        return _FROM_ADBC_STATUS[int(status)]
    return "UNKNOWN"


def _server_message(text: str) -> str:
    """The server's sentence: without the driver's status prefix, vendor code and trailer."""
    text = _VENDOR_SUFFIX.sub("", text.strip())
    text = _ADBC_PREFIX.sub("", text, count=1)
    named = list(_TRAILER.finditer(text))
    if named and named[-1].end() == len(text):
        text = text[: named[-1].start()]
    return text.strip()


def from_adbc(error: adbc_driver_manager.Error) -> PitlakeError:
    """The typed error for an exception raised by ADBC's driver manager.

    The result carries the server's message and the gRPC code; raise it ``from`` the original
    to keep the driver's full text in the traceback.
    """
    text = str(error)
    code = _grpc_code(error, text)
    cls = _CLASSES.get(code, Internal)
    return cls(_server_message(text), grpc_code=code)


def translate(error: BaseException) -> Optional[PitlakeError]:
    """The typed error for what ADBC or a result stream raised, or None for anything else.

    Errors that arrive while a result streams (a query cancelled by the server's timeout, a
    division by zero in the tenth batch) surface through pyarrow's stream reader as
    ``pyarrow.ArrowException`` or ``OSError`` with the driver's text, which names the gRPC
    code the same way; an error without it (a local file) is not pitlake's and gives None.
    """
    if isinstance(error, PitlakeError):
        return error
    if isinstance(error, adbc_driver_manager.Error):
        return from_adbc(error)
    if isinstance(error, (pa.ArrowException, OSError)):
        text = str(error)
        named = list(_TRAILER.finditer(text))
        if named:
            code = _GO_CODE_NAMES[named[-1].group(1)]
        elif "[FlightSQL]" in text:
            # The driver's own checks of what the server sent (a stream whose schema is not
            # the one announced): the server broke the protocol.
            code = "INTERNAL"
        else:
            return None
        return _CLASSES.get(code, Internal)(_server_message(text), grpc_code=code)
    return None
