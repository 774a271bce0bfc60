"""The deployment in deploy/ agrees with the code it deploys.

The Kubernetes manifests are parsed as they are (kustomize may not be installed) and,
where `kubectl kustomize` or `kustomize` is, built too. The config templates are rendered
the way the init containers render them and validated with the services' own config
models, so a renamed or removed setting fails here and not in a cluster. Ports, probes,
the orchestrator's capabilities (against docs/deployment.md) and the image's entry points
(against pyproject.toml) are checked the same way.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

from sandbox_sdk.server.embedded import ServerConfigFile
from sandbox_sdk.server.gateway.config import GatewayConfig
from sandbox_sdk.server.ids import ORCHESTRATOR_ID_PATTERN
from sandbox_sdk.server.orchestrator.config import OrchestratorConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "k8s" / "base"
OVERLAYS = DEPLOY / "k8s" / "overlays"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCS = REPO / "docs" / "deployment.md"
FAKE_TOKEN = "t" * 64
FAKE_SECRETS = {
    "internal-token": FAKE_TOKEN,
    "database-url": "postgresql://sandbox:secret@postgres.example:5432/sandbox",
    "redis-url": "redis://redis.example:6379/0",
}
NODE_NAME = "ip-10-0-1-23.eu-west-1.compute.internal"
NODE_IP = "10.0.1.23"
# What the downward API gives the pods' fieldRef environment variables.
FIELD_VALUES = {"spec.nodeName": NODE_NAME, "status.hostIP": NODE_IP}
DATASTORE_SETTINGS = ("database_url", "redis_url")


def _render_config_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_config", DEPLOY / "docker" / "render_config.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_config = _render_config_module()


def _kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return loaded


def _manifests() -> list[dict[str, Any]]:
    documents = []
    for name in _kustomization(BASE)["resources"]:
        documents += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return documents


MANIFESTS = _manifests()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in MANIFESTS if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod(workload: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _one(workload, name)["spec"]["template"]["spec"]
    return spec


def _container(pod: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    (container,) = [c for c in pod[key] if c["name"] == name]
    return dict(container)


GATEWAY_POD = _pod("Deployment", "sandbox-gateway")
ORCHESTRATOR_POD = _pod("DaemonSet", "sandbox-orchestrator")
GATEWAY = _container(GATEWAY_POD, "gateway")
ORCHESTRATOR = _container(ORCHESTRATOR_POD, "orchestrator")


def _config_template(config_map: str) -> str:
    (generator,) = [
        g for g in _kustomization(BASE)["configMapGenerator"] if g["name"] == config_map
    ]
    (entry,) = generator["files"]
    key, _, file_name = str(entry).partition("=")
    assert key == "config.yaml"
    return (BASE / file_name).read_text()


def _mounted_volume(container: dict[str, Any], pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume whose mount in ``container`` holds ``path``."""
    for mount in container.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            return dict(volume)
    raise AssertionError(f"{path} is on no volume mounted in {container['name']}")


def _expanded(container: dict[str, Any], argument: str) -> str:
    """``argument`` with ``$(VAR)`` replaced as Kubernetes does, from fieldRef variables."""
    for variable in container.get("env", []):
        field = variable["valueFrom"]["fieldRef"]["fieldPath"]
        argument = argument.replace(f"$({variable['name']})", FIELD_VALUES[field])
    assert "$(" not in argument, f"{argument}: a variable the container does not define"
    return argument


def _rendered(pod: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The config file the pod's render-config init container writes, with fake Secrets."""
    init = _container(pod, "render-config", init=True)
    command = [_expanded(init, argument) for argument in init["command"]]
    assert command[0] == "sandbox-render-config"
    template_path, output_path, *options = command[1:]
    assert "configMap" in _mounted_volume(init, pod, template_path)
    assert "emptyDir" in _mounted_volume(init, pod, output_path)
    assignments: list[str] = []
    node_name = None
    for flag, value in zip(options[::2], options[1::2], strict=True):
        if flag == "--orchestrator-id-from-node":
            node_name = value
            continue
        assert flag == "--set"
        key, _, source = value.partition("=")
        if source.startswith("@"):
            marker = "@?" if source.startswith("@?") else "@"
            secret_path = source.removeprefix(marker)
            assert "secret" in _mounted_volume(init, pod, secret_path), secret_path
            fake = tmp_path / PurePosixPath(secret_path).name
            fake.write_text(FAKE_SECRETS[fake.name] + "\n")
            source = f"{marker}{fake}"
        assignments.append(f"{key}={source}")
    config: dict[str, Any] = render_config.render(
        _config_template(_config_map_of(pod, template_path)), assignments, node_name
    )
    return config


def _config_map_of(pod: dict[str, Any], template_path: str) -> str:
    init = _container(pod, "render-config", init=True)
    name: str = _mounted_volume(init, pod, template_path)["configMap"]["name"]
    return name


@pytest.fixture
def gateway_config(tmp_path: Path) -> GatewayConfig:
    section = ServerConfigFile.model_validate(_rendered(GATEWAY_POD, tmp_path)).gateway
    return GatewayConfig.model_validate(section)


@pytest.fixture
def orchestrator_config(tmp_path: Path) -> OrchestratorConfig:
    rendered = _rendered(ORCHESTRATOR_POD, tmp_path)
    section = ServerConfigFile.model_validate(rendered).orchestrator
    return OrchestratorConfig.model_validate(section)


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _container_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


# --- the manifests ---------------------------------------------------------------------


def test_the_kustomization_names_every_file_of_the_base() -> None:
    kustomization = _kustomization(BASE)
    generated = {
        entry.partition("=")[2]
        for generator in kustomization["configMapGenerator"]
        for entry in generator["files"]
    }
    listed = {*kustomization["resources"], *generated, "kustomization.yaml"}
    assert {p.name for p in BASE.glob("*.yaml")} == listed
    for manifest in MANIFESTS:
        assert {"apiVersion", "kind", "metadata"} <= manifest.keys(), manifest


def test_the_workloads_and_their_companions_exist() -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in MANIFESTS}
    assert {
        ("Deployment", "sandbox-gateway"),
        ("Service", "sandbox-gateway"),
        ("HorizontalPodAutoscaler", "sandbox-gateway"),
        ("PodDisruptionBudget", "sandbox-gateway"),
        ("DaemonSet", "sandbox-orchestrator"),
    } <= kinds
    hpa = _one("HorizontalPodAutoscaler", "sandbox-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sandbox-gateway",
    }
    pdb = _one("PodDisruptionBudget", "sandbox-gateway")["spec"]
    assert pdb["minAvailable"] < hpa["minReplicas"]
    labels = _one("Deployment", "sandbox-gateway")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


# --- the configs -----------------------------------------------------------------------


def test_the_gateway_config_is_valid_and_gets_the_token_from_a_secret(
    gateway_config: GatewayConfig,
) -> None:
    assert gateway_config.internal_token == FAKE_TOKEN
    template = yaml.safe_load(_config_template("sandbox-gateway-config"))
    assert "internal_token" not in template["gateway"]


def test_the_orchestrator_config_is_valid_with_its_node_id_and_token(
    orchestrator_config: OrchestratorConfig,
) -> None:
    assert orchestrator_config.internal_token == FAKE_TOKEN
    template = yaml.safe_load(_config_template("sandbox-orchestrator-config"))
    assert "internal_token" not in template["orchestrator"]
    assert orchestrator_config.orchestrator_id == render_config.orchestrator_id_for_node(NODE_NAME)
    assert not orchestrator_config.insecure_dev_loopback_only
    # The agent's interpreter must be visible, read-only, inside bubblewrap.
    agent_python = PurePosixPath(orchestrator_config.sandbox.agent_python)
    assert any(agent_python.is_relative_to(p) for p in orchestrator_config.sandbox.read_only_paths)


def test_the_gateway_needs_postgresql_and_takes_redis_when_given(
    gateway_config: GatewayConfig,
) -> None:
    for setting in DATASTORE_SETTINGS:
        assert getattr(gateway_config, setting) == FAKE_SECRETS[setting.replace("_", "-")]
    init = _container(GATEWAY_POD, "render-config", init=True)["command"]
    sources = {
        key: source
        for key, _, source in (a.partition("=") for a in init)
        if key.startswith("gateway.")
    }
    assert sources["gateway.database_url"].startswith("@/")
    assert sources["gateway.redis_url"].startswith("@?")
    volumes = {v["name"]: v for v in GATEWAY_POD["volumes"]}
    assert volumes["datastores"]["secret"] == {"secretName": "sandbox-datastores"}


def test_an_absent_optional_secret_leaves_the_setting_unset(tmp_path: Path) -> None:
    rendered = render_config.render(
        "gateway: {listen: '0.0.0.0:50051'}",
        [f"gateway.database_url=@?{tmp_path}/database-url"],
    )
    assert rendered == {"gateway": {"listen": "0.0.0.0:50051"}}


def test_gateways_route_from_the_registry_the_orchestrators_register_in(
    gateway_config: GatewayConfig, orchestrator_config: OrchestratorConfig
) -> None:
    assert gateway_config.follows_registry
    assert gateway_config.orchestrators == []
    registry = orchestrator_config.registry
    assert registry is not None
    assert registry.database_url == gateway_config.database_url
    daemonset_port = _container_port(ORCHESTRATOR, "grpc")
    (host_port,) = [p["hostPort"] for p in ORCHESTRATOR["ports"] if p["name"] == "grpc"]
    assert host_port == daemonset_port
    assert registry.advertise_address == f"{NODE_IP}:{host_port}"


def test_finished_experiments_are_archived_where_the_gateways_read(
    gateway_config: GatewayConfig, orchestrator_config: OrchestratorConfig
) -> None:
    assert orchestrator_config.archive is not None
    assert orchestrator_config.archive.database_url == gateway_config.database_url


@pytest.mark.parametrize(
    "node_name",
    ["node-a", "ip-10-0-1-23.ec2.internal", "gke-pool-1-6f1e2a3b-x7kq", "A" * 253],
)
def test_orchestrator_ids_derived_from_node_names_are_valid_and_stable(node_name: str) -> None:
    derived = render_config.orchestrator_id_for_node(node_name)
    assert ORCHESTRATOR_ID_PATTERN.match(derived)
    assert derived == render_config.orchestrator_id_for_node(node_name)
    assert derived != render_config.orchestrator_id_for_node(node_name + "x")


def test_rendering_refuses_a_missing_secret_and_an_empty_node_name(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="internal-token"):
        render_config.render("gateway: {}", [f"gateway.internal_token=@{tmp_path}/internal-token"])
    with pytest.raises(ValueError, match="node name"):
        render_config.render("orchestrator: {}", [], "")


def test_the_render_command_writes_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    template, output = tmp_path / "template.yaml", tmp_path / "config.yaml"
    template.write_text("orchestrator:\n  listen: 0.0.0.0:50061\n")
    code = render_config.main([str(template), str(output), "--orchestrator-id-from-node", "n1"])
    assert code == 0
    assert output.stat().st_mode & 0o077 == 0
    assert yaml.safe_load(output.read_text())["orchestrator"] == {
        "listen": "0.0.0.0:50061",
        "orchestrator_id": render_config.orchestrator_id_for_node("n1"),
    }


# --- ports and probes ------------------------------------------------------------------


def test_the_gateway_ports_are_the_configs_and_the_services(
    gateway_config: GatewayConfig,
) -> None:
    grpc_port = _container_port(GATEWAY, "grpc")
    assert grpc_port == _port(gateway_config.listen)
    assert _container_port(GATEWAY, "metrics") == gateway_config.metrics_port
    services = [
        m
        for m in MANIFESTS
        if m["kind"] == "Service"
        and m["spec"]["selector"] == {"app.kubernetes.io/name": "sandbox-gateway"}
    ]
    assert len(services) == 2
    for service in services:
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [grpc_port]


def test_the_orchestrator_ports_are_its_configs_and_its_services(
    orchestrator_config: OrchestratorConfig,
) -> None:
    grpc_port = _container_port(ORCHESTRATOR, "grpc")
    assert grpc_port == _port(orchestrator_config.listen)
    (grpc,) = [p for p in ORCHESTRATOR["ports"] if p["name"] == "grpc"]
    assert grpc["hostPort"] == grpc_port
    metrics_port = _container_port(ORCHESTRATOR, "metrics")
    assert metrics_port == orchestrator_config.metrics_port
    service = _one("Service", "sandbox-orchestrator")["spec"]
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == {
        "grpc": grpc_port,
        "metrics": metrics_port,
    }


@pytest.mark.parametrize("container", [GATEWAY, ORCHESTRATOR], ids=["gateway", "orchestrator"])
@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_probes_ask_grpc_health_on_the_service_port(container: dict[str, Any], probe: str) -> None:
    assert container[probe]["grpc"] == {"port": _container_port(container, "grpc")}


# --- privileges ------------------------------------------------------------------------


def _documented_capabilities() -> set[str]:
    section = DOCS.read_text().split("## The orchestrator's privileges", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `CAP_([A-Z_]+)` \|", section, flags=re.MULTILINE))


def test_the_orchestrator_has_exactly_the_documented_capabilities() -> None:
    context = ORCHESTRATOR["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    added = context["capabilities"]["add"]
    assert len(added) == len(set(added))
    assert set(added) == _documented_capabilities()
    assert "privileged" not in context
    assert "hostNetwork" not in ORCHESTRATOR_POD
    assert "hostPID" not in ORCHESTRATOR_POD


def test_every_relaxed_confinement_of_the_orchestrator_is_documented() -> None:
    context = ORCHESTRATOR["securityContext"]
    section = DOCS.read_text().split("## The orchestrator's privileges", 1)[1]
    relaxed = {
        "seccompProfile": context["seccompProfile"]["type"],
        "appArmorProfile": context["appArmorProfile"]["type"],
        "procMount": context["procMount"],
    }
    for field, value in relaxed.items():
        assert f"`{field}: {value}`" in section


def test_the_gateway_runs_unprivileged() -> None:
    assert GATEWAY_POD["securityContext"]["runAsNonRoot"] is True
    for container in [GATEWAY, *GATEWAY_POD["initContainers"]]:
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True


def test_every_secret_the_pods_use_is_documented() -> None:
    names = {
        volume["secret"]["secretName"]
        for pod in (GATEWAY_POD, ORCHESTRATOR_POD)
        for volume in pod["volumes"]
        if "secret" in volume
    }
    assert names
    docs = DOCS.read_text()
    for name in names:
        assert f"`{name}`" in docs, name


# --- the image -------------------------------------------------------------------------


def _dockerfile_instructions(keyword: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith(f"{keyword} ")
    ]


def _installed_commands() -> set[str]:
    """The console scripts of pyproject.toml and the files the Dockerfile puts on PATH."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    copied = set()
    for copy in _dockerfile_instructions("COPY"):
        *sources, target = copy.split()
        if target.startswith("/usr/local/bin/"):
            source = sources[-1]
            assert (REPO / source).is_file(), source
            copied.add(PurePosixPath(target).name)
    return set(scripts) | copied


def test_the_image_entry_points_are_console_scripts() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = _dockerfile_instructions("ENTRYPOINT")
    assert yaml.safe_load(entrypoint)[0] in scripts
    wrapper = (DEPLOY / "docker" / "orchestrator-entrypoint.sh").read_text()
    (execs,) = re.findall(r"^exec (\S+)", wrapper, flags=re.MULTILINE)
    assert execs in scripts
    assert {"sandbox-gateway", "sandbox-orchestrator"} <= set(scripts)


def test_every_command_the_pods_run_is_installed_in_the_image() -> None:
    installed = _installed_commands()
    for pod in (GATEWAY_POD, ORCHESTRATOR_POD):
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["command"][0] in installed, container["name"]


def test_the_image_installs_the_server_extra() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (default,) = [a for a in _dockerfile_instructions("ARG") if a.startswith("EXTRAS=")]
    assert set(default.partition("=")[2].split(",")) <= set(extras)
    assert "server" in default


# --- kustomize, where it is installed --------------------------------------------------


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _kustomizations() -> Iterator[Path]:
    yield BASE
    yield from sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))


@pytest.mark.parametrize("directory", list(_kustomizations()), ids=lambda p: p.name)
def test_kustomize_builds_and_links_the_generated_config_maps(directory: Path) -> None:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    built = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    documents = [d for d in yaml.safe_load_all(built) if d]
    config_maps = {d["metadata"]["name"] for d in documents if d["kind"] == "ConfigMap"}
    workloads = [d for d in documents if d["kind"] in {"Deployment", "DaemonSet"}]
    assert len(workloads) == 2
    for workload in workloads:
        for volume in workload["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert container["image"].startswith("sandbox-sdk:")
