"""Template specs as hostile input: every bad field named at once, and the content address."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_sdk.server.orchestrator.templates import (
    DebianBase,
    OciArchiveBase,
    TemplateDefaults,
    TemplateFile,
    TemplateSpec,
    validate_template_spec,
)
from sandbox_sdk.server.orchestrator.templates.debian_base import (
    host_debian_mirror,
    mmdebstrap_argv,
)
from sandbox_sdk.server.status import ServiceError

GOOD = TemplateSpec(
    base=DebianBase("bookworm", "minbase"),
    apt_packages=("jq", "python3-numpy", "g++"),
    pip_packages=("numpy==2.1.0", "requests[socks]>=2,<3", "scikit-learn"),
    files=(TemplateFile("/etc/app/config.toml", b"x = 1\n", 0o600),),
    commands=(("sh", "-c", "echo hi"),),
    defaults=TemplateDefaults(env={"A": "1"}, workdir="/srv", user="1000:1000"),
)


def violations(spec: TemplateSpec) -> dict[str, str]:
    with pytest.raises(ServiceError) as error:
        validate_template_spec(spec)
    return dict(error.value.field_violations)


def test_a_good_spec_passes() -> None:
    assert validate_template_spec(GOOD) is GOOD


@pytest.mark.parametrize(
    "name", ["-oDpkg::Options=x", "--allow-unauthenticated", "Jq", "a", "jq;rm", "jq bash", "",
             "../x", "jq=1.0", "x" * 201],
)  # fmt: skip
def test_apt_names_that_could_be_options_or_worse_are_refused(name: str) -> None:
    found = violations(TemplateSpec(base=DebianBase("bookworm"), apt_packages=("jq", name)))
    assert list(found) == ["spec.apt_packages[1]"]


@pytest.mark.parametrize(
    "name", ["--index-url=http://evil", "-e.", "git+https://x/y", "pkg @ https://x", "./local",
             "numpy; os_name", "name==1 --pre", "a b", ""],
)  # fmt: skip
def test_pip_requirements_that_are_not_plain_names_are_refused(name: str) -> None:
    found = violations(TemplateSpec(base=DebianBase("bookworm"), pip_packages=(name,)))
    assert list(found) == ["spec.pip_packages[0]"]


@pytest.mark.parametrize(
    "path", ["relative", "/etc/../root/.ssh/x", "/etc//x", "/etc/x/", "/", "/a\x00b",
             "/proc/self/x", "/workspace/x", "/.sandbox-agent/usr/x", "/tmp", "/" + "a" * 300],
)  # fmt: skip
def test_file_paths_must_be_absolute_normal_and_not_the_sandboxs(path: str) -> None:
    spec = TemplateSpec(base=DebianBase("bookworm"), files=(TemplateFile(path, b""),))
    assert list(violations(spec)) == ["spec.files[0].path"]


def test_every_bad_field_is_named_at_once() -> None:
    spec = TemplateSpec(
        base=DebianBase("Bookworm;", "everything"),
        files=(TemplateFile("/etc/x", b"x" * (16 << 20 + 1), 0o4755),),
        commands=((), ("a\x00",)),
        defaults=TemplateDefaults(
            env={"1BAD": "x"}, workdir="rel", user="-u0", limits={"memory_bytes": -1, "x": 1}
        ),
    )
    assert set(violations(spec)) == {
        "spec.base.suite",
        "spec.base.variant",
        "spec.files[0].mode",
        "spec.files[0].content",
        "spec.commands[0]",
        "spec.commands[1]",
        "spec.defaults.env['1BAD']",
        "spec.defaults.workdir",
        "spec.defaults.user",
        "spec.defaults.limits['memory_bytes']",
        "spec.defaults.limits['x']",
    }


def test_oci_bases_name_their_archive_by_digest_and_take_no_apt_packages() -> None:
    found = violations(
        TemplateSpec(base=OciArchiveBase("images/x.tar", "ABC"), apt_packages=("jq",))
    )
    assert set(found) == {"spec.base.path", "spec.base.sha256", "spec.apt_packages"}


def test_sizes_and_counts_are_bounded() -> None:
    many = TemplateSpec(
        base=DebianBase("bookworm"),
        apt_packages=("jq",) * 257,
        files=tuple(TemplateFile(f"/f/{i}", b"") for i in range(257)),
        commands=(("true",),) * 65,
    )
    assert set(violations(many)) == {"spec.apt_packages", "spec.files", "spec.commands"}


def test_the_digest_is_the_content_not_the_spelling() -> None:
    same = TemplateSpec(
        base=DebianBase("bookworm", "minbase"),
        apt_packages=("g++", "python3-numpy", "jq", "jq"),
        pip_packages=GOOD.pip_packages,
        files=(TemplateFile("/etc/app/config.toml", b"x = 1\n", 0o600),),
        commands=GOOD.commands,
        defaults=TemplateDefaults(env={"A": "1"}, workdir="/srv", user="1000:1000"),
    )
    assert same.digest == GOOD.digest
    changed = TemplateSpec(base=GOOD.base, apt_packages=GOOD.apt_packages)
    assert changed.digest != GOOD.digest
    other_content = TemplateSpec(
        base=GOOD.base, files=(TemplateFile("/etc/app/config.toml", b"x = 2\n", 0o600),)
    )
    assert other_content.digest != TemplateSpec(base=GOOD.base, files=GOOD.files).digest


def test_mmdebstrap_gets_names_after_its_options() -> None:
    argv = mmdebstrap_argv(DebianBase("bookworm"), ["jq", "g++"], Path("/t"),
                           "http://deb.debian.org/debian")  # fmt: skip
    assert argv[-4:] == ["--", "bookworm", "/t", "http://deb.debian.org/debian"]
    assert "--include=g++,jq" in argv
    assert "--mode=unshare" in argv


def test_the_mirror_comes_from_the_hosts_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert host_debian_mirror(tmp_path) == "http://mirror.example/debian"
    assert host_debian_mirror(tmp_path / "missing") == "http://deb.debian.org/debian"
