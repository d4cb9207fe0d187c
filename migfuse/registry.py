"""One small registry: a name -> object map that refuses duplicates and imports modules on demand.

    HEADS = Registry("head")
    @HEADS.register("cmtf")
    class CMTF(...): ...
    HEADS.get("cmtf")              # UserError naming the known names for an unknown one

    BACKBONES = Registry("backbone", modules={"mvit_v2_s": "migfuse.backbones.mvit"})
    BACKBONES.get("mvit_v2_s")     # imports migfuse.backbones.mvit, which registers the name

The lazy module map keeps imports cheap: asking for one backbone imports only its module (the
skeleton backbones never pull timm or torchvision). Anything may register more names at import
time, a test file included: what is registered is listed and found like the built-in ones.
Used for backbones, fusion heads, view poolings and export formats (timm's `register_model`,
tightened: a second registration of a name is a bug, not an override).
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, Mapping, TypeVar

from migfuse.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind ("backbone", "head", ...), with an optional lazy module map."""

    def __init__(self, kind: str, modules: Mapping[str, str] | None = None):
        self.kind = kind
        self._modules = dict(modules or {})  # name -> module that registers it when imported
        self._objects: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`, or, without `obj`, return a decorator that does.

        Raises:
            ValueError: `name` is registered already (two definitions of one name are a bug).
        """
        def add(o: T) -> T:
            if name in self._objects and self._objects[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._objects[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The object registered as `name`, importing its module first when needed.

        Raises:
            UserError: an unknown name (the message lists the known ones).
        """
        if name not in self._objects and name in self._modules:
            importlib.import_module(self._modules[name])
        if name not in self._objects:
            raise UserError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}")
        return self._objects[name]

    def load_all(self) -> dict[str, T]:
        """Every registered object, by name (imports each module of the lazy map)."""
        return {name: self.get(name) for name in self.names()}

    def names(self) -> list[str]:
        """Every known name, sorted: the lazy map's and those registered so far."""
        return sorted(set(self._modules) | set(self._objects))

    def __contains__(self, name: object) -> bool:
        return name in self._objects or name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
