"""The models an orchestrator serves, by name and alias."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sandbox_sdk.errors import ErrorReason
from sandbox_sdk.server.orchestrator.experiments.providers.base import ModelProvider
from sandbox_sdk.server.orchestrator.experiments.providers.local import LocalProvider
from sandbox_sdk.server.orchestrator.experiments.providers.openai_compat import (
    OpenAICompatibleProvider,
)
from sandbox_sdk.server.orchestrator.experiments.providers.scripted import ScriptedProvider
from sandbox_sdk.server.orchestrator.experiments.settings import ModelConfig
from sandbox_sdk.server.status import not_found

_PROVIDER_CLASSES: dict[str, type[ModelProvider]] = {
    "local": LocalProvider,
    "openai": OpenAICompatibleProvider,
    "scripted": ScriptedProvider,
}


@dataclass(frozen=True)
class ServedModel:
    """A configured model and the provider instance serving it."""

    config: ModelConfig
    provider: ModelProvider


class ModelRegistry:
    """Resolves model names and aliases to one shared provider instance each."""

    def __init__(self, configs: Sequence[ModelConfig]) -> None:
        self._models = sorted(
            (ServedModel(c, _PROVIDER_CLASSES[c.provider](c)) for c in configs),
            key=lambda m: m.config.name,
        )
        self._by_name = {
            name: model
            for model in self._models
            for name in (model.config.name, *model.config.aliases)
        }

    def models(self) -> list[ServedModel]:
        """Every served model, sorted by canonical name."""
        return list(self._models)

    def resolve(self, name: str) -> ServedModel:
        """The model called ``name``; ServiceError NOT_FOUND (MODEL_NOT_FOUND) lists the others."""
        model = self._by_name.get(name)
        if model is None:
            served = ", ".join(
                m.config.name
                + (f" (aliases: {', '.join(m.config.aliases)})" if m.config.aliases else "")
                for m in self._models
            )
            raise not_found(
                ErrorReason.MODEL_NOT_FOUND,
                f"model {name!r} is not served here; use one of: {served or 'none configured'}",
            )
        return model

    async def aclose(self) -> None:
        """Closes every provider."""
        for model in self._models:
            await model.provider.aclose()
