"""A small decorator-based registry used by every pluggable slot.

Example::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("resnet")
    class ResNet(nn.Module): ...

    model = BACKBONES.build({"name": "resnet", "output_channels": 512}, where="model.backbone")

`build` checks the keyword arguments against the constructor signature, so a misspelt key in a
config file is reported with its full path instead of surfacing as a ``TypeError`` deep inside.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name was asked of a registry, or a name was registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to classes or factory functions of one kind (``"backbone"``, ``"decoder"``...).

    Args:
        kind: what the registry holds, used in error messages.
        loader: optional callable that imports the modules which populate the registry. It runs the
            first time a name is looked up, so importing the registry itself does no work.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._loader = loader
        self._loaded = loader is None

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or factory under ``name``."""

        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not obj:
                raise RegistryError(f"{self.kind} '{name}' is registered twice "
                                    f"({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            return obj

        return deco

    # -- lookup ---------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if not self._loaded and self._loader is not None:
            self._loaded = True
            self._loader()

    def names(self) -> list[str]:
        """Sorted list of the registered names."""
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Callable[..., T]:
        """Return the entry registered under ``name`` or raise a helpful :class:`RegistryError`."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'. Known {self.kind}s: {', '.join(self.names())}.{hint}"
            ) from None

    def build(self, spec: Mapping[str, Any] | str, where: str | None = None, **extra: Any) -> T:
        """Instantiate an entry from a spec ``{"name": ..., **kwargs}`` (or just a name).

        Args:
            spec: the config mapping; ``name`` selects the entry, every other key is a keyword argument.
            where: dotted config path of the spec, used in error messages (e.g. ``model.backbone``).
            **extra: keyword arguments supplied by the caller (shapes derived from other stages).
                They override nothing: a key given in both places is an error.
        """
        where = where or self.kind
        if isinstance(spec, str):
            spec = {"name": spec}
        if "name" not in spec:
            raise RegistryError(f"{where}: missing 'name' (one of: {', '.join(self.names())})")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        factory = self.get(spec["name"])
        clash = set(kwargs) & set(extra)
        if clash:
            raise RegistryError(f"{where}: key(s) {sorted(clash)} are set by the pipeline and cannot be "
                                f"given in the config")
        check_kwargs(factory, kwargs, where=f"{where} ({self.kind} '{spec['name']}')")
        return factory(**kwargs, **extra)


def check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Raise :class:`RegistryError` if ``kwargs`` holds a key that ``factory`` does not accept."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(f"{where}: unknown key '{key}'. Accepted keys: {', '.join(accepted)}.{hint}")
