"""Templates: root file systems built from Debian packages or OCI image archives, cached
by content address, that environments start from copy-on-write."""

from sandbox_sdk.server.orchestrator.templates.build_steps import TemplateBuilder
from sandbox_sdk.server.orchestrator.templates.cache import (
    Template,
    TemplateCache,
    TemplateInUse,
    TemplateNotFound,
)
from sandbox_sdk.server.orchestrator.templates.logged_process import TemplateBuildError
from sandbox_sdk.server.orchestrator.templates.spec import (
    DebianBase,
    OciArchiveBase,
    TemplateDefaults,
    TemplateFile,
    TemplateSpec,
    validate_template_spec,
)

__all__ = [
    "DebianBase",
    "OciArchiveBase",
    "Template",
    "TemplateBuildError",
    "TemplateBuilder",
    "TemplateCache",
    "TemplateDefaults",
    "TemplateFile",
    "TemplateInUse",
    "TemplateNotFound",
    "TemplateSpec",
    "validate_template_spec",
]
