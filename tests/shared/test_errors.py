import grpc
from google.rpc import error_details_pb2

from clawmesh.shared.errors import (
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    bad_request_fields,
    status_of,
)


def test_invalid_argument_names_the_field():
    status = InvalidArgument("message.content", "must not be empty").to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad_request_fields(status) == ["message.content"]
    assert "message.content: must not be empty" == status.message


def test_resource_exhausted_carries_retry_info_and_quota_failure():
    exc = ResourceExhausted("tenant t1 over 10 rps", retry_after_s=1.5, subject="tenant:t1")
    status = exc.to_status()
    kinds = [d.TypeName() for d in status.details]
    assert kinds == ["google.rpc.RetryInfo", "google.rpc.QuotaFailure"]
    info = error_details_pb2.RetryInfo()
    status.details[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() == 1_500_000_000


def test_unavailable_without_reopen_time_has_no_retry_info():
    assert list(Unavailable("breaker open").to_status().details) == []


def test_unexpected_exception_is_internal_without_leaking_text():
    status = status_of(KeyError("secret"))
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert "secret" not in status.message
