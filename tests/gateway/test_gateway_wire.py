"""Reading a string field from serialized requests without parsing them."""

from __future__ import annotations

import pytest

from sandbox_sdk.api.v1 import environment_pb2, requests_pb2
from sandbox_sdk.server.gateway.wire import MalformedMessageError, string_field


def test_finds_the_id_among_other_fields() -> None:
    request = requests_pb2.WriteFileRequest(
        environment_id="env-o1-0123456789abcdef",
        file=environment_pb2.FileContent(path="a.txt", content=b"\x00" * 100_000, mode=0o600),
    )
    assert string_field(request.SerializeToString(), 1) == "env-o1-0123456789abcdef"


def test_reads_fields_after_varints_and_maps() -> None:
    request = requests_pb2.ListExperimentsRequest(
        page_size=7, label_selector={"a": "b"}, environment_id="env-o2-0123456789abcdef", states=[1]
    )
    assert string_field(request.SerializeToString(), 4) == "env-o2-0123456789abcdef"
    assert string_field(request.SerializeToString(), 2) == ""


def test_the_last_occurrence_wins_like_protobuf() -> None:
    first = requests_pb2.GetEnvironmentRequest(environment_id="env-o1-aaaaaaaaaaaaaaaa")
    second = requests_pb2.GetEnvironmentRequest(environment_id="env-o2-bbbbbbbbbbbbbbbb")
    data = first.SerializeToString() + second.SerializeToString()
    assert (
        string_field(data, 1) == requests_pb2.GetEnvironmentRequest.FromString(data).environment_id
    )


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05abc", b"\x0a", b"\x08\xff", b"\x0b", b"\x0a\x02\xff\xfe"],
    ids=["truncated-string", "missing-length", "truncated-varint", "group", "not-utf8"],
)
def test_malformed_messages_are_reported(data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        string_field(data, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0a\x00",
        b"\x0a\x03abc",
        b"\x12\x03abc",  # another field alone
        b"\x0a\x03abc\x0a\x03xyz",  # repeated: the last wins
        b"\x0a\x03abc\x10\x01",  # followed by a varint field
        b"\x0a\x80\x01" + b"a" * 128,  # a two-byte length
    ],
    ids=["empty", "empty-string", "sole", "other-field", "repeated", "then-varint", "long"],
)
def test_agrees_with_protobuf_whether_or_not_the_field_is_alone(data: bytes) -> None:
    parsed = requests_pb2.GetEnvironmentRequest.FromString(data)
    assert string_field(data, 1) == parsed.environment_id
