"""Methods as presets: a head with its own parameters, a post-processing and a protocol per benchmark.

A method is one decorated function returning a `Method` (as timm registers models)::

    @register_method
    def mymethod() -> Method:
        return Method("mymethod", "My method", head="last_block", defaults={"attention": "kk"}, benchmarks={...})

`Method.settings(benchmark, **overrides)` gives the `Settings` the authors used on that benchmark
(their default protocol when `benchmark` is None or unknown to them), with `overrides` applied on
top; `protocol="shared"` replaces every protocol field with `naclip.benchmarks.SHARED`'s values and
keeps only what makes the method (its head's parameters, as its authors set them on that benchmark).
A method defined outside the package registers the same way when its module is imported, or
through the `naclip.methods` entry point group (see `naclip.methods`).

A plug-in is a method's piece that applies on top of other methods (ResCLIP's RCS and SFR on
SCLIP's or ClearCLIP's last block, PEARL's propagation after any head), registered with
`register_plugin`. A combination is named ``base+plugin[+plugin...]`` everywhere (`get_method`,
`Segmenter`, ``--method``) and is built on first use; it runs with the settings its authors published
where they published it, and says in `Method.combination` who did, or that nobody did.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naclip.benchmarks import BENCHMARKS, CLASSES_DIR, check_protocol, shared_settings
from naclip.heads import Head, get_head
from naclip.registry import Registry, unknown
from naclip.settings import METHOD_PARAMS, SETTINGS_FIELDS, Settings, option_fields, owners_of


@dataclass(frozen=True)
class Protocol:
    """A method's settings on one benchmark: overrides of its defaults, a class file, and where they come from."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    class_file: str | None = None  # relative to naclip/resources/classes; None: the benchmark's own
    source: str = ""


@dataclass(frozen=True)
class Method:
    """A training-free segmentation method as its authors ran it.

    `head` names the registered head that makes its patch features (and declares its own parameters);
    `defaults` are the method's own settings (its parameters, post-processing, default protocol);
    `benchmarks` the per-benchmark protocol. `authors_protocol` is False when no run of the authors
    under these benchmarks is public and NACLIP's protocol stands in (say so wherever it is shown).
    `docs` is the page of notes on how it follows (and departs from) its authors' code.
    """

    name: str
    title: str
    defaults: Mapping[str, Any]
    benchmarks: Mapping[str, Protocol]
    head: str = "last_block"
    source: str = ""
    authors_protocol: bool = True
    note: str = ""
    docs: str = ""
    combination: str = ""  # a combination's provenance (see `combine`); empty for a method of its own

    def __post_init__(self) -> None:
        known = {**SETTINGS_FIELDS, **{f.name: f for f in option_fields(self.head_spec.params)}}
        for where, keys in [("defaults", self.defaults)] + [
            (f"benchmark {key}", protocol.settings) for key, protocol in self.benchmarks.items()
        ]:
            for key in keys:
                if key not in known or key == "method":
                    raise _refused(self.name, key, where, list(known))
        for key in self.benchmarks:
            BENCHMARKS.get(key)

    @property
    def head_spec(self) -> Head:
        return get_head(self.head)

    def own_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of `values` that are this method's own parameters."""
        names = {f.name for f in option_fields(self.head_spec.params)}
        return {key: value for key, value in values.items() if key in names}

    def protocol(self, benchmark: str | None) -> Protocol:
        """The protocol on `benchmark` (a key of `naclip.benchmarks.BENCHMARKS`); an empty one for other data."""
        return self.benchmarks.get(benchmark or "", Protocol())

    def settings(self, benchmark: str | None = None, protocol: str = "authors", **overrides: Any) -> Settings:
        """The settings of this method on `benchmark` (None: its default protocol), then `overrides`.

        `protocol="shared"`: the shared protocol's fields (`naclip.benchmarks.SHARED`) over the authors' ones.
        """
        shared = shared_settings(benchmark) if check_protocol(protocol) == "shared" else {}
        return (
            Settings(method=self.name)
            .replace(**{**self.defaults, **self.protocol(benchmark).settings, **shared})
            .replace(**overrides)
        )

    def class_file(self, benchmark: str | None, protocol: str = "authors") -> Path | None:
        """The method's own class file on `benchmark`; None where it uses the benchmark's (always, when shared)."""
        name = self.protocol(benchmark).class_file if check_protocol(protocol) == "authors" else None
        return CLASSES_DIR / name if name else None

    def describe(self) -> str:
        """A paragraph: what the method is, where its settings come from."""
        origin = "the authors' protocol" if self.authors_protocol else "NACLIP's protocol (no authors' run published)"
        if self.combination:
            origin = self.combination
        notes = f" Notes: {self.docs}." if self.docs else ""
        return f"{self.name}: {self.title}; {origin}. {self.note}{notes}".strip()

    @property
    def unpublished(self) -> bool:
        """A combination that nobody published: its numbers compare with no paper's."""
        return self.combination.startswith(UNPUBLISHED)


def _refused(method: str, key: str, where: str, known: list[str]) -> ValueError:
    owners = [owner for owner in owners_of(key) if owner != method]
    if owners:
        return ValueError(f"method {method!r}, {where}: {key!r} is a parameter of {', '.join(owners)}")
    error = unknown("key", key, [name for name in known if name != "method"])
    return ValueError(f"method {method!r}, {where}: {error}")


METHODS: Registry[Method] = Registry("method")


def register_method(fn: Callable[[], Method]) -> Callable[[], Method]:
    """Register the `Method` that `fn()` returns under its name; its parameters start from its defaults."""
    _register(fn())
    return fn


def _register(method: Method) -> Method:
    params_class = method.head_spec.params
    kinds = typing.get_type_hints(params_class)
    for name in kinds.keys() & {f.name for f in option_fields(params_class)}:
        if name in SETTINGS_FIELDS:
            raise ValueError(
                f"method {method.name!r}: its parameter {name!r} is a shared setting; name it after the method"
            )
        for other in owners_of(name):
            theirs = typing.get_type_hints(type(METHOD_PARAMS.get(other)))[name]
            if other != method.name and theirs != kinds[name]:
                raise ValueError(
                    f"method {method.name!r}: its parameter {name!r} ({kinds[name]}) is {other!r}'s too, as {theirs}; "
                    "one name means one thing: name it after the method"
                )
    params = params_class(**method.own_params(method.defaults))
    METHOD_PARAMS.register(method.name, params)
    METHODS.register(method.name, method)
    for plugin in PLUGINS.values():
        if method.name in plugin.in_code:
            combine(f"{method.name}{SEPARATOR}{plugin.name}")
    return method


def unregister_method(name: str) -> Method:
    """Remove the method `name` from the registry; the `Method` it was."""
    METHOD_PARAMS.unregister(name)
    return METHODS.unregister(name)


def get_method(name: str) -> Method:
    """The registered method `name`; ValueError with the closest name otherwise."""
    return METHODS.get(name)


# -- plug-ins ------------------------------------------------------------------------------------
SEPARATOR = "+"
UNPUBLISHED = "unpublished combination"


@dataclass(frozen=True)
class Plugin:
    """A method's piece applied on top of another method (see the module).

    `apply(base, published)` returns the combination (its head, defaults and per-benchmark
    protocols; `combine` names and labels it). `published` maps the bases on which the combination
    was published to where: `in_code` are those whose settings come from published code (`apply`
    then takes those settings), the others are reported in a paper whose settings are not public
    (`apply` keeps the base's protocol and the plug-in's defaults).
    """

    name: str
    title: str
    apply: Callable[[Method, bool], Method]
    published: Mapping[str, str] = field(default_factory=dict)
    in_code: frozenset[str] = frozenset()


PLUGINS: Registry[Plugin] = Registry("plug-in")


def register_plugin(fn: Callable[[], Plugin]) -> Callable[[], Plugin]:
    """Register the `Plugin` that `fn()` returns. The combinations published in code are registered with it
    (or with their base, whichever comes later), so that every registry-wide check covers them."""
    plugin = fn()
    PLUGINS.register(plugin.name, plugin)
    for base in sorted(plugin.in_code & set(METHODS)):
        combine(f"{base}{SEPARATOR}{plugin.name}")
    return fn


def combine(name: str) -> Method:
    """The combination `name` (``base+plugin[+plugin...]``), built and registered; ValueError naming what is
    wrong with it. Plug-ins apply left to right, each on the combination so far."""
    if name in METHODS:
        return METHODS.get(name)
    base, *plugins = name.split(SEPARATOR)
    if not plugins or not all(plugins):
        raise ValueError(f"method combination {name!r}: expected base{SEPARATOR}plugin, like sclip{SEPARATOR}resclip")
    method = get_method(base)
    origins = [method.combination] if method.combination else []
    for plugin_name in plugins:
        plugin = PLUGINS.get(plugin_name)
        where = plugin.published.get(method.name)
        in_code = method.name in plugin.in_code
        combined = plugin.apply(method, in_code)
        if where is None:
            origins.append(f"{UNPUBLISHED}: nobody published {plugin.name} on {method.name}")
        elif in_code:
            origins.append(f"{plugin.name} on {method.name} as its authors' code runs it ({where})")
        else:
            origins.append(
                f"{plugin.name} on {method.name} published in {where}, settings not public: {method.name}'s protocol "
                f"and {plugin.name}'s defaults"
            )
        method = dataclasses.replace(
            combined,
            name=f"{method.name}{SEPARATOR}{plugin.name}",
            title=f"{method.title} + {plugin.title}",
            authors_protocol=method.authors_protocol and in_code,
            combination="",
        )
    unpublished = [origin for origin in origins if origin.startswith(UNPUBLISHED)]
    label = "; ".join(unpublished + [origin for origin in origins if origin not in unpublished])
    return _register(dataclasses.replace(method, combination=label))


def _combination(name: str) -> None:
    if SEPARATOR in name:
        combine(name)


METHODS.fallback = _combination
METHOD_PARAMS.fallback = _combination
