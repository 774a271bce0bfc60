"""A deprecation path for a property that became a method.

``stream.result`` and ``experiment.status`` were properties of the first sync
client and are methods now, as they always were in the asyncio one. The attribute
returns a callable stand-in: calling it is the new API; using it as the value
(reading an attribute, comparing, printing, testing truth) still gives the
method's result, with a :class:`DeprecationWarning` that says what to write.
An identity test (``experiment.status is ExperimentState.SUCCEEDED``) cannot be
kept working; compare with ``==``, or better, call the method.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


class MethodOnceProperty:
    """A descriptor: the method, bound in a stand-in that also acts as its value."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method
        self._name = method.__name__
        self.__doc__ = method.__doc__
        self.__wrapped__ = method

    @classmethod
    def wrap(cls, method: F) -> F:
        """``method`` with the deprecation path; typed as the method itself."""
        return cast(F, cls(method))

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = f"{owner.__name__}.{name}"

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _CallableValue(functools.partial(self._method, instance), self._name)


class _CallableValue:
    """Calls through; as a value, warns and stands for the call's result."""

    __slots__ = ("_call", "_name")

    def __init__(self, call: Callable[[], Any], name: str) -> None:
        self._call = call
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def _value(self) -> Any:
        short = self._name.rsplit(".", 1)[-1]
        warnings.warn(
            f"{self._name} is a method now: write .{short}() (using it without "
            "the call is deprecated and will stop working)",
            DeprecationWarning,
            stacklevel=3,
        )
        return self._call()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._value(), name)

    def __eq__(self, other: object) -> bool:
        return bool(self._value() == other)

    def __ne__(self, other: object) -> bool:
        return bool(self._value() != other)

    def __hash__(self) -> int:
        return hash(self._value())

    def __bool__(self) -> bool:
        return bool(self._value())

    def __str__(self) -> str:
        return str(self._value())

    def __repr__(self) -> str:
        return repr(self._value())

    def __format__(self, spec: str) -> str:
        return format(self._value(), spec)
