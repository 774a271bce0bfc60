"""Page tokens come back from clients as input: only an unedited token of the same
listing, issued by this process, continues it; anything else is INVALID_ARGUMENT
naming ``page_token``, before any of its content is used."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest

from sandbox_sdk.server import page_tokens
from sandbox_sdk.server.gateway.listing import decode_page_token, encode_page_token
from sandbox_sdk.server.status import ServiceError

_SCOPE = {"tenant": "team-a", "labels": {"app": "web"}}


def _sequence(position: Any) -> int:
    if not isinstance(position, int):
        raise TypeError("not a sequence number")
    return position


def _refused(token: str, kind: str = "environments", scope: object = _SCOPE) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        page_tokens.decode(token, kind, scope, _sequence)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in refused.value.field_violations] == ["page_token"]
    return refused.value


def _unsigned(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_a_token_continues_its_own_listing() -> None:
    token = page_tokens.encode("environments", _SCOPE, 41)
    assert page_tokens.decode(token, "environments", _SCOPE, _sequence) == 41
    assert page_tokens.decode("", "environments", _SCOPE, _sequence) is None


@pytest.mark.parametrize(
    "forged",
    [
        "garbage",
        "a.b.c",
        "é.é",
        "x" * (page_tokens.MAX_TOKEN_CHARS + 1),
        # What the unsigned codecs used to accept: a cursor the client wrote itself.
        _unsigned({"p": 7, "q": "0123456789abcdef"}),
        _unsigned({"k": "environments", "p": 7}) + ".AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_a_forged_token_is_refused(forged: str) -> None:
    _refused(forged)


def test_an_edited_token_is_refused() -> None:
    body, mac = page_tokens.encode("environments", _SCOPE, 41).split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["p"] = 0
    _refused(f"{_unsigned(payload)}.{mac}")


def test_a_token_of_another_listing_tenant_or_kind_is_refused() -> None:
    token = page_tokens.encode("environments", _SCOPE, 41)
    _refused(token, scope={**_SCOPE, "tenant": "team-b"})
    _refused(token, scope={**_SCOPE, "labels": {}})
    _refused(token, kind="experiments")


def test_a_position_the_listing_does_not_accept_is_refused() -> None:
    _refused(page_tokens.encode("environments", _SCOPE, "not-a-number"))


def test_a_gateway_token_is_bound_to_its_tenant_and_listing() -> None:
    positions = {"orch1": ("orchestrator-token", 3)}
    token = encode_page_token("ListEnvironments", "team-a", positions)
    assert decode_page_token("ListEnvironments", "team-a", token) == positions
    for kind, tenant in [("ListEnvironments", "team-b"), ("ListExperiments", "team-a")]:
        with pytest.raises(ServiceError) as refused:
            decode_page_token(kind, tenant, token)
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
