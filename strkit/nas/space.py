"""The base class of search spaces: what the searcher, the architecture files and the report ask of one.

A search space is a module whose choices are :class:`~strkit.nas.proxyless.MixedEdge` cells. It is
registered like any other stage (a backbone in ``BACKBONES``, a localisation body in the ``tps``
rectifier's ``LOC_BODIES``); being a subclass of :class:`SearchSpace` is what makes a registered entry
searchable, so a new space is one class::

    @BACKBONES.register("my_space")
    class MySpace(SearchSpace):
        def __init__(self, in_channels, img_h, img_w, ...): ...   # build the cells
        def arch_section(self, choices): ...                      # the architecture of one sub-network

The searcher asks :func:`is_search_space` whether a config names one, and :meth:`SearchSpace.retrain_spec`
what replaces it in the retraining config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from strkit.nas.proxyless import MixedEdge
from strkit.registry import Registry


class SearchSpace(nn.Module):
    """A searchable part of a recogniser.

    Attributes:
        part: which part of the recogniser it is (``backbone`` or ``rectifier``): where its cells go in an
            architecture file.
    """

    part: str = "backbone"

    def edges(self) -> list[MixedEdge]:
        """The mixed cells, in the order their choices are listed."""
        return [m for m in self.modules() if isinstance(m, MixedEdge)]

    def arch_section(self, choices: Sequence[int]) -> dict[str, Any]:
        """The architecture-file section of the sub-network that takes candidate ``choices[i]`` in cell ``i``
        (validated by :func:`strkit.models.backbones.searched.validate_arch`)."""
        raise NotImplementedError(f"{type(self).__name__} does not derive architectures")

    @classmethod
    def retrain_spec(cls, arch_path: str) -> dict[str, Any]:
        """The stage spec that builds the derived architecture ``arch_path`` for retraining."""
        return {"name": "searched", "arch": arch_path}


def space_class(registry: Registry[Any], spec: Mapping[str, Any] | Any) -> type[SearchSpace] | None:
    """The :class:`SearchSpace` subclass the stage spec ``spec`` (``{name, ...}``) builds from ``registry``, or
    None when it names no search space (or is not a spec)."""
    if not isinstance(spec, Mapping) or str(spec.get("name")) not in registry:
        return None
    factory: Callable[..., Any] = registry.get(str(spec["name"]))
    return factory if isinstance(factory, type) and issubclass(factory, SearchSpace) else None


def is_search_space(registry: Registry[Any], spec: Mapping[str, Any] | Any) -> bool:
    """Whether ``spec`` names a search space of ``registry``."""
    return space_class(registry, spec) is not None


def search_space_names(registry: Registry[Any]) -> list[str]:
    """The names of ``registry`` that build a search space."""
    return [n for n in registry.names() if is_search_space(registry, {"name": n})]
