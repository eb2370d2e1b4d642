"""The one place where failures become gRPC status codes (DESIGN.md's table).

Core code raises the domain exceptions below; the server's error interceptor
turns them into a status with rich details (``google.rpc.*`` in
``grpc-status-details-bin``). Servicers never call ``context.abort`` with a
code of their own choosing.

    raise InvalidArgument("message.content", "must not be empty")
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2


class ClawMeshError(Exception):
    """Base class: a failure with a defined gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # True when the failure is a dependency's, passed on (``metadata.FAULT_ORIGIN``).
    downstream: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list:
        """Rich-error detail messages (google.rpc.*) to attach."""
        return []

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(ClawMeshError):
    """Bad input. Names every offending field in a google.rpc.BadRequest."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field_or_violations, description: str = "") -> None:
        if isinstance(field_or_violations, str):
            violations = [FieldViolation(field_or_violations, description)]
        else:
            violations = list(field_or_violations)
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))

    def details(self) -> list:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
        ]


class Unauthenticated(ClawMeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ClawMeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ClawMeshError):
    code = grpc.StatusCode.NOT_FOUND


class DeadlineExceeded(ClawMeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def _retry_info(retry_after_s: float | None) -> list:
    if retry_after_s is None:
        return []
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(max(retry_after_s, 0) * 1e9))
    return [error_details_pb2.RetryInfo(retry_delay=delay)]


class ResourceExhausted(ClawMeshError):
    """Rate limited, queue full or shed: the caller may retry after ``retry_after_s``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None, subject: str = ""):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.subject = subject

    def details(self) -> list:
        out = _retry_info(self.retry_after_s)
        if self.subject:
            out.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=self.subject, description=self.message
                        )
                    ]
                )
            )
        return out


class Unavailable(ClawMeshError):
    """Circuit open or no healthy backend."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> list:
        return _retry_info(self.retry_after_s)


class Internal(ClawMeshError):
    """A bug. Never used for any of the situations above."""

    code = grpc.StatusCode.INTERNAL


class Downstream(ClawMeshError):
    """A call to another mesh service failed: its status is passed on unchanged."""

    downstream = True

    def __init__(self, error: grpc.aio.AioRpcError, service: str) -> None:
        super().__init__(f"{service}: {error.details() or error.code().name}")
        self.code = error.code()
        self._status = None
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                self._status = status_pb2.Status.FromString(value)

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self._status is not None:
            status.details.extend(self._status.details)
        return status


CODES = {code.value[0]: code for code in grpc.StatusCode}


def code_name(code: int) -> str:
    """``3`` -> ``"INVALID_ARGUMENT"``."""
    return CODES[code].name if code in CODES else str(code)


def status_of(exc: BaseException) -> status_pb2.Status:
    """The status an exception maps to; anything unexpected is INTERNAL."""
    if isinstance(exc, ClawMeshError):
        return exc.to_status()
    if isinstance(exc, grpc.aio.AioRpcError):
        return Downstream(exc, "downstream").to_status()
    return status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")


def retry_after_of(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay a failed call carries, seconds (None: none)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


def bad_request_fields(status: status_pb2.Status) -> list[str]:
    """Fields named by a BadRequest detail in a status (for clients and tests)."""
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields
