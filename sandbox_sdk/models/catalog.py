"""Models the service can run experiments with."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox_sdk.api.v1 import experiment_pb2


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model: its canonical name, aliases and provider."""

    name: str
    aliases: tuple[str, ...] = ()
    provider: str = ""
    context_length: int = 0
    description: str = ""

    @classmethod
    def from_proto(cls, message: experiment_pb2.Model) -> ModelInfo:
        """Converts the wire form."""
        return cls(
            name=message.name,
            aliases=tuple(message.aliases),
            provider=message.provider,
            context_length=message.context_length,
            description=message.description,
        )
