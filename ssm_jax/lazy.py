"""Lazy package exports: a package's names are imported on first use, not with the package.

The packages of this project (``ssm_jax``, ``maml``, ``envs``) hold jax-free parts (argument
checks, configs, constants) next to modules that import JAX, flax or gymnax (seconds to import).
``lazy_exports`` gives a package a module-level ``__getattr__`` (PEP 562) so that ``import maml``
or ``from maml.config import MAMLRLConfig`` imports no JAX, while ``from maml import MetaMAML``
and ``maml.MetaMAML`` behave exactly as eager imports would (the command line validates its
arguments before anything heavy is imported, see ``benchmarks.cli``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Callable, Mapping, Sequence


class _LazyPackage(types.ModuleType):
    """A package whose exports may share a submodule's name (``envs.rollout`` is the function of
    the module ``envs.rollout``): when the import system binds such a submodule on the package,
    the package binds the exported function instead, as an eager ``from .rollout import rollout``
    in ``__init__`` would."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}" \
                and name in self.__dict__.get("_shadowing_exports", ()):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable, Callable, list]:
    """``(__getattr__, __dir__, __all__)`` for the package named ``package``.

    ``exports`` maps each submodule (relative name) to the names it exports. An exported name is
    imported from its submodule on first access and cached in the package namespace; any other
    attribute that names a submodule (``maml.core``) imports it; the rest raise AttributeError.
    An export named like its submodule stays the export (``sys.modules`` holds the module).
    """
    owner = {name: module for module, names in exports.items() for name in names}
    module = sys.modules[package]
    namespace = module.__dict__
    namespace["_shadowing_exports"] = frozenset(n for n, m in owner.items() if n == m)
    module.__class__ = _LazyPackage

    def __getattr__(name: str):
        if name in owner:
            value = getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
            namespace[name] = value
            return value
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(owner))

    return __getattr__, __dir__, sorted(owner)
