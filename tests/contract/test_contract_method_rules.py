"""Each RPC's rules are declared once, as method options in proto/, and every reader agrees.

The table below is the spec: what the SDK retries, what scope, routing and
quota the gateway applies, and which orchestrator handler serves each call. The
descriptors must declare it, and the client's, the gateway's and the
orchestrator's tables, derived from the descriptors, must equal it.

It is what those three kept by hand before the rules moved into proto/, with
one difference that changes no behaviour: the gateway now calls ListApiKeys
and RevokeApiKey idempotent, as the SDK always did; it serves them itself and
never repeats them toward an orchestrator.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from sandbox_sdk.api.v1 import gateway_service_pb2, options_pb2, orchestrator_service_pb2
from sandbox_sdk.client import calls
from sandbox_sdk.server.gateway import methods
from sandbox_sdk.server.gateway.api_keys import Scope
from sandbox_sdk.server.gateway.methods import Quota, Routing
from sandbox_sdk.server.orchestrator import servicer

GATEWAY = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
ORCHESTRATOR = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]

_Options = descriptor_pb2.MethodOptions
UNKNOWN = _Options.IDEMPOTENCY_UNKNOWN
NO_SIDE_EFFECTS = _Options.NO_SIDE_EFFECTS
IDEMPOTENT = _Options.IDEMPOTENT


class Rule(NamedTuple):
    level: int  # idempotency_level
    by_request_id: bool  # a repeated request_id returns the first result
    scope: Scope | None  # None: not a GatewayService RPC
    routing: Routing | None
    quota: Quota | None
    owner: str | None  # the orchestrator's handler object; None: the gateway serves it


# Short names, to keep the spec one row per RPC.
NSE, IDEM, UNK = NO_SIDE_EFFECTS, IDEMPOTENT, UNKNOWN
R, W, A = Scope.READ, Scope.WRITE, Scope.ADMIN
PLACE, ENV, EXP, FAN_OUT, ANY, LOCAL, TPL = (
    Routing.PLACE,
    Routing.ENVIRONMENT,
    Routing.EXPERIMENT,
    Routing.FAN_OUT,
    Routing.ANY,
    Routing.LOCAL,
    Routing.TEMPLATE,
)
ENVS, EXPS, TPLS = "environments", "experiments", "templates"
# ReadFile, ListFiles, StatFile and DownloadDirectory are IDEMPOTENT, not NO_SIDE_EFFECTS:
# they postpone idle expiry. RenameFile and UploadDirectory are never repeated (a rename's
# repeat finds its source gone; an upload would have to replay its whole stream).
# fmt: off
SPEC: dict[str, Rule] = {
    "CreateEnvironment":      Rule(UNK,  True,  W,    PLACE,   Quota.ENVIRONMENTS, ENVS),
    "GetEnvironment":         Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "ListEnvironments":       Rule(NSE,  False, R,    FAN_OUT, None,               ENVS),
    "UpdateEnvironment":      Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "DeleteEnvironment":      Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "ExecCommand":            Rule(UNK,  False, W,    ENV,     None,               ENVS),
    "WriteFile":              Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "ReadFile":               Rule(IDEM, False, R,    ENV,     None,               ENVS),
    "ListFiles":              Rule(IDEM, False, R,    ENV,     None,               ENVS),
    "GetEnvironmentUsage":    Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "StreamEnvironmentUsage": Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "RemoveFile":             Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "RenameFile":             Rule(UNK,  False, W,    ENV,     None,               ENVS),
    "MakeDirectory":          Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "StatFile":               Rule(IDEM, False, R,    ENV,     None,               ENVS),
    "UploadDirectory":        Rule(UNK,  False, W,    ENV,     None,               ENVS),
    "DownloadDirectory":      Rule(IDEM, False, R,    ENV,     None,               ENVS),
    "CreateTemplate":         Rule(UNK,  True,  W,    PLACE,   None,               TPLS),
    "GetTemplate":            Rule(NSE,  False, R,    TPL,     None,               TPLS),
    "ListTemplates":          Rule(NSE,  False, R,    FAN_OUT, None,               TPLS),
    "DeleteTemplate":         Rule(IDEM, False, W,    TPL,     None,               TPLS),
    "StreamTemplateBuildEvents": Rule(NSE, False, R,  TPL,     None,               TPLS),
    "SnapshotEnvironment":    Rule(UNK,  True,  W,    ENV,     None,               TPLS),
    "CreateExperiment":       Rule(UNK,  True,  W,    ENV,     Quota.EXPERIMENTS,  EXPS),
    "GetExperiment":          Rule(NSE,  False, R,    EXP,     None,               EXPS),
    "ListExperiments":        Rule(NSE,  False, R,    FAN_OUT, None,               EXPS),
    "CancelExperiment":       Rule(IDEM, False, W,    EXP,     None,               EXPS),
    "GetExperimentResults":   Rule(NSE,  False, R,    EXP,     None,               EXPS),
    "StreamExperimentEvents": Rule(NSE,  False, R,    EXP,     None,               EXPS),
    "ListModels":             Rule(NSE,  False, R,    ANY,     None,               EXPS),
    "CreateApiKey":           Rule(UNK,  True,  A,    LOCAL,   None,               None),
    "ListApiKeys":            Rule(NSE,  False, A,    LOCAL,   None,               None),
    "RevokeApiKey":           Rule(IDEM, False, A,    LOCAL,   None,               None),
    "GetCapacity":            Rule(NSE,  False, None, None,    None,               ENVS),
    "GetTenantUsage":         Rule(NSE,  False, None, None,    None,               ENVS),
    "StartProcess":           Rule(UNK,  True,  W,    ENV,     None,               ENVS),
    "GetProcess":             Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "ListProcesses":          Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "WaitProcess":            Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "StreamProcessOutput":    Rule(NSE,  False, R,    ENV,     None,               ENVS),
    "WriteProcessInput":      Rule(UNK,  False, W,    ENV,     None,               ENVS),
    "SignalProcess":          Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "ResizeProcessTerminal":  Rule(IDEM, False, W,    ENV,     None,               ENVS),
    "ForwardPort":            Rule(UNK,  False, W,    ENV,     None,               ENVS),
}
# fmt: on
GATEWAY_SPEC = {name: rule for name, rule in SPEC.items() if rule.scope is not None}
ORCHESTRATOR_SPEC = {name: rule for name, rule in SPEC.items() if rule.owner is not None}


def _rules(method: MethodDescriptor) -> options_pb2.MethodRules:
    return method.GetOptions().Extensions[options_pb2.rules]


def _level(method: MethodDescriptor) -> int:
    return method.GetOptions().idempotency_level


def test_the_spec_names_every_rpc_of_both_services() -> None:
    assert set(GATEWAY_SPEC) == {m.name for m in GATEWAY.methods}
    assert set(ORCHESTRATOR_SPEC) == {m.name for m in ORCHESTRATOR.methods}


@pytest.mark.parametrize("service", [GATEWAY, ORCHESTRATOR], ids=lambda s: s.name)
def test_every_rpc_declares_its_rules(service: ServiceDescriptor) -> None:
    gateway = service is GATEWAY
    for method in service.methods:
        assert method.GetOptions().HasExtension(options_pb2.rules), method.name
        rules = _rules(method)
        # Each service sets the rules it reads, and only those.
        assert (rules.scope != rules.SCOPE_UNSPECIFIED) == gateway, method.name
        assert (rules.routing != rules.ROUTING_UNSPECIFIED) == gateway, method.name
        assert (rules.owner != rules.OWNER_UNSPECIFIED) != gateway, method.name
        if not gateway:
            assert rules.quota == rules.QUOTA_UNSPECIFIED, method.name


@pytest.mark.parametrize("service", [GATEWAY, ORCHESTRATOR], ids=lambda s: s.name)
def test_the_contract_declares_which_calls_may_be_repeated(service: ServiceDescriptor) -> None:
    declared = {m.name: (_level(m), _rules(m).idempotent_by_request_id) for m in service.methods}
    assert declared == {m.name: SPEC[m.name][:2] for m in service.methods}


@pytest.mark.parametrize("service", [GATEWAY, ORCHESTRATOR], ids=lambda s: s.name)
def test_idempotent_by_request_id_only_where_the_request_has_one(
    service: ServiceDescriptor,
) -> None:
    for method in service.methods:
        has_field = "request_id" in method.input_type.fields_by_name
        assert _rules(method).idempotent_by_request_id == has_field, method.name


def test_the_client_retries_what_the_spec_allows() -> None:
    idempotent = {n for n, r in GATEWAY_SPEC.items() if r.level != UNKNOWN}
    creates = {n for n, r in GATEWAY_SPEC.items() if r.by_request_id}

    assert idempotent == calls.IDEMPOTENT_METHODS
    assert creates == calls.RETRY_SAFE_CREATES
    assert {
        "ExecCommand",
        "RenameFile",
        "UploadDirectory",
        "WriteProcessInput",
        "ForwardPort",
    } == calls.NOT_RETRY_SAFE
    stub = SimpleNamespace(**{name: object() for name in GATEWAY_SPEC})
    table = calls.method_table(stub)
    assert {n for n, rpc in table.items() if rpc.retry_safe} == idempotent | creates


def test_the_gateway_applies_the_spec() -> None:
    applied = {
        name: (
            spec.idempotent,
            spec.request_id_field is not None,
            spec.scope,
            spec.routing,
            spec.quota,
        )
        for name, spec in methods.METHODS.items()
    }
    expected = {
        name: (rule.level != UNKNOWN, rule.by_request_id, rule.scope, rule.routing, rule.quota)
        for name, rule in GATEWAY_SPEC.items()
    }
    assert applied == expected


def test_the_orchestrator_serves_each_rpc_from_the_handler_the_spec_names() -> None:
    owners = {name: rule.owner for name, rule in ORCHESTRATOR_SPEC.items()}
    assert {n for n, o in owners.items() if o == ENVS} == servicer.ENVIRONMENT_RPCS
    assert {n for n, o in owners.items() if o == EXPS} == servicer.EXPERIMENT_RPCS
    assert {n for n, o in owners.items() if o == TPLS} == servicer.TEMPLATE_RPCS


def test_client_gateway_and_orchestrator_agree_on_each_call() -> None:
    table = calls.method_table(SimpleNamespace(**{m.name: object() for m in GATEWAY.methods}))
    for name, spec in methods.METHODS.items():
        # What the SDK repeats, the gateway repeats too (a create: when it carries a request_id).
        assert table[name].retry_safe == (spec.idempotent or spec.request_id_field is not None)
        if spec.routing is Routing.LOCAL:
            continue
        gateway, upstream = GATEWAY.methods_by_name[name], ORCHESTRATOR.methods_by_name[name]
        assert _level(upstream) == _level(gateway), name
        assert _rules(upstream).idempotent_by_request_id == _rules(gateway).idempotent_by_request_id
        assert name in servicer.ENVIRONMENT_RPCS | servicer.EXPERIMENT_RPCS | servicer.TEMPLATE_RPCS


def _scratch_method(
    rules: options_pb2.MethodRules | None, first_field: str = "environment_id"
) -> MethodDescriptor:
    """A GetEnvironment RPC with these rules, in a descriptor pool of its own."""
    proto = descriptor_pb2.FileDescriptorProto(name="probe.proto", package="probe", syntax="proto3")
    request = proto.message_type.add(name="Request")
    request.field.add(
        name=first_field,
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    method = proto.service.add(name="GatewayService").method.add(
        name="GetEnvironment", input_type=".probe.Request", output_type=".probe.Request"
    )
    if rules is not None:
        method.options.Extensions[options_pb2.rules].CopyFrom(rules)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindServiceByName("probe.GatewayService").methods[0]


_Rules = options_pb2.MethodRules


@pytest.mark.parametrize(
    ("rules", "first_field", "error"),
    [
        (None, "environment_id", "declares no routing"),
        (_Rules(routing=_Rules.ROUTING_ENVIRONMENT), "environment_id", "declares no scope"),
        (_Rules(scope=_Rules.SCOPE_READ), "environment_id", "declares no routing"),
        (
            _Rules(scope=_Rules.SCOPE_READ, routing=_Rules.ROUTING_ENVIRONMENT),
            "experiment_id",
            "not its request's field 1",
        ),
        (
            _Rules(
                scope=_Rules.SCOPE_WRITE,
                routing=_Rules.ROUTING_ENVIRONMENT,
                idempotent_by_request_id=True,
            ),
            "environment_id",
            "which its request lacks",
        ),
    ],
    ids=["no-rules", "no-scope", "no-routing", "wrong-id-field", "no-request-id-field"],
)
def test_the_gateway_refuses_an_rpc_whose_rules_are_missing_or_wrong(
    rules: options_pb2.MethodRules | None, first_field: str, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        methods.spec_of(_scratch_method(rules, first_field))


def test_the_orchestrator_refuses_an_rpc_without_an_owner() -> None:
    with pytest.raises(ValueError, match="declares no owner"):
        servicer.owner_of(_scratch_method(None))
