"""Typed configs: dataclass defaults, then a YAML file, then ``key=value`` overrides (OmegaConf).

Every run writes its resolved config as ``config.yaml`` beside its outputs, and checkpoints carry it
too, so a run can be rebuilt without the command line.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .errors import Lm2vError

T = TypeVar("T")


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), presets: Sequence[str] = (),
    base: dict | None = None,
) -> T:
    """Build ``cls`` from its defaults, ``presets`` (a command's own defaults), ``base`` (a nested
    dict, e.g. the model of an ``--init`` run), an optional YAML file and ``a.b=value`` overrides,
    in that order.

    Values are read as YAML 1.2 (:class:`YamlLoader`): ``runtime.amp=off`` is the string ``off``.
    A file that cannot be read or is not a YAML mapping, a malformed override, unknown keys, wrongly
    typed values and values outside a field's declared choices or bounds (:func:`validate`) raise
    :class:`Lm2vError` with a one-line message naming the dotted key.
    """
    parsed = [(*parse_override(o), f" in override {o!r}") for o in overrides]
    conf = OmegaConf.structured(cls)
    _update(conf, [(*parse_override(o), f" in preset {o!r}") for o in presets])
    _update(conf, [(k, v, "") for k, v in _leaves(base or {})])
    if path is not None:
        _update(conf, [(k, v, f" in config file {path}") for k, v in _leaves(read_yaml_mapping(path))])
    _update(conf, parsed)
    try:
        cfg = OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        raise Lm2vError(f"bad config: {_omegaconf_message(e, '')}") from None
    validate(cfg)
    return cfg  # type: ignore[return-value]


class YamlLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: only ``true``/``false`` are booleans and ``1e-3`` is a float.

    PyYAML reads YAML 1.1, where ``off``, ``no``, ``yes`` are booleans and ``1:30`` is 90, so a string
    field given ``off`` would receive ``'False'``. Here such words stay the text the user typed; a
    boolean field still takes them (OmegaConf converts on/off/yes/no).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if dup is not None:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {dup!r}", node.start_mark)
        return super().construct_mapping(node, deep)


_YAML_12 = {  # tag -> (pattern, first characters): YAML 1.2 core, less octal, hex and digit-only floats
    "bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
    "int": (r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
    "float": (r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", "-+0123456789."),
}
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] not in _YAML_12]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, (_pattern, _first) in _YAML_12.items():
    YamlLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first))


def parse_yaml(text: str, what: str) -> Any:
    """``text`` read by :class:`YamlLoader`; a syntax error is an :class:`Lm2vError` naming ``what``."""
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise Lm2vError(f"{what} is not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise Lm2vError(f"{what} is not valid YAML: {str(e).splitlines()[0]}") from None


def read_yaml_mapping(path: str | Path) -> dict:
    """The mapping in the YAML file ``path`` (an empty file is ``{}``); a missing, unreadable,
    non-UTF-8, malformed or non-mapping file is an :class:`Lm2vError`."""
    p = Path(path)
    if p.is_dir():
        raise Lm2vError(f"config file {p} is a directory, not a YAML file")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise Lm2vError(f"config file not found: {p}") from None
    except UnicodeDecodeError as e:
        raise Lm2vError(f"config file {p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:
        raise Lm2vError(f"cannot read config file {p}: {e.strerror or e}") from None
    data = parse_yaml(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Lm2vError(f"config file {p} must hold a mapping of keys (e.g. 'optim: {{lr: 0.001}}'), "
                        f"got a {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``: the value read as YAML 1.2 (:func:`parse_yaml`)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise Lm2vError(f"override must look like key=value, got {text!r}")
    if any(not part.strip() for part in key.split(".")):
        raise Lm2vError(f"override {text!r} needs a dotted key like optim.lr before '='")
    return key.strip(), parse_yaml(value, f"the value of override {text!r}")


def _leaves(data: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """A nested dict as (dotted key, value) pairs; lists and scalars are leaves."""
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            yield from _leaves(v, key)
        else:
            yield key, v


def _update(conf: Any, items: Sequence[tuple[str, Any, str]]) -> None:
    """Set each (dotted key, value) on the structured ``conf`` (OmegaConf checks the key and converts
    the value to the field's type); the first failure is a one-line :class:`Lm2vError`."""
    for key, value, source in items:
        try:
            OmegaConf.update(conf, key, value)
        except (OmegaConfBaseException, TypeError, ValueError) as e:
            raise Lm2vError(f"bad config{source}: {_omegaconf_message(e, key)}") from None


def _omegaconf_message(e: Exception, key: str) -> str:
    """OmegaConf's first line, led by the dotted key; an unknown key lists the keys its section has."""
    full_key = getattr(e, "full_key", None) or key
    parent = getattr(e, "object_type", None)
    if isinstance(e, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(parent):
        section = full_key.rpartition(".")[0]
        names = ", ".join(f.name for f in dataclasses.fields(parent))
        return f"unknown key {full_key} ({section or 'the top level'} has: {names})"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{full_key}: {first}" if full_key else first


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a dataclass config (for JSON/YAML and checkpoints)."""
    return dataclasses.asdict(cfg)


CONFIG_END = "# end of the lm2v config"  # the last line of a saved config: a file cut short lacks it


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), ending with :data:`CONFIG_END`."""
    from .utils.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False) + CONFIG_END + "\n")


def config_from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config saved by :func:`save_config` (unknown keys are an error)."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data)))
    except OmegaConfBaseException as e:
        raise Lm2vError(f"bad saved config: {str(e).splitlines()[0]}") from None
    validate(cfg)
    return cfg  # type: ignore[return-value]


# -- declared choices and ranges ------------------------------------------------------------------
# A config field states what it accepts in its metadata, next to its default:
#     mode: str = field(default="reinit", metadata=choices("reinit", "linear", "finetune"))
#     ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))
#     betas: List[float] = field(default=..., metadata={**bounds(ge=0, lt=1), **length(2)})
# and :func:`validate` checks every such field of a config and of the configs nested in it (a list's
# choices and bounds apply to each item), and that no float is NaN or infinite. The per-config
# ``check_*`` functions keep only the rules that tie several fields together.
# (OmegaConf also enforces typing.Literal annotations, but in its own words, without ranges, and
# not for configs built in Python.)


def choices(*allowed: Any) -> dict:
    """Field metadata: the value (or, for a list, each item) must be one of ``allowed``."""
    return {"choices": allowed}


def bounds(ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> dict:
    """Field metadata: a number (or, for a list, each item) within these bounds (``ge`` >=, ``gt`` >,
    ``le`` <=, ``lt`` <). None always passes: in an Optional field it means "unset"."""
    return {"bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}}


def length(n: int) -> dict:
    """Field metadata: a list of exactly ``n`` items."""
    return {"length": n}


def validate(cfg: Any, path: str = "") -> None:
    """Check the declared choices, bounds and lengths of every field of ``cfg`` and of the configs
    nested in it, and that no float is NaN or infinite; the first violation raises
    :class:`Lm2vError` naming the field by its dotted path."""
    for f in dataclasses.fields(cfg):
        name, value = f"{path}.{f.name}" if path else f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, name)
        _check_finite(name, value)
        if "length" in f.metadata and value is not None and len(value) != f.metadata["length"]:
            raise Lm2vError(f"{name} must be a list of {f.metadata['length']} numbers, got {list(value)}")
        if "choices" in f.metadata:
            _check_choice(name, value, f.metadata["choices"])
        if "bounds" in f.metadata and value is not None:
            _check_bounds(name, value, f.metadata["bounds"])


def _items(name: str, value: Any) -> tuple[list, str]:
    """A list's items named ``NAME items``, or a single value under its own name."""
    return (list(value), f"{name} items") if isinstance(value, (list, tuple)) else ([value], name)


def _check_finite(name: str, value: Any) -> None:
    items, what = _items(name, value)
    bad = next((x for x in items if isinstance(x, float) and not math.isfinite(x)), None)
    if bad is not None:
        raise Lm2vError(f"{what} must be {'a finite number' if what == name else 'finite numbers'}, got {bad}")


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    items, what = _items(name, value)
    for item in items:
        if item not in allowed:
            raise Lm2vError(f"{what} must be one of {', '.join(map(str, allowed))}, got {item!r}")


_RELATIONS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
              "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _check_bounds(name: str, value: float | list, limits: dict) -> None:
    items, what = _items(name, value)
    bad = next((x for x in items if not all(_RELATIONS[k][1](x, b) for k, b in limits.items())), None)
    if bad is None:
        return
    low = next((k for k in ("ge", "gt") if k in limits), None)
    high = next((k for k in ("le", "lt") if k in limits), None)
    if low and high:  # an interval, written as in maths: [0, 1], [0, 1), (0, 1]
        left, right = "[" if low == "ge" else "(", "]" if high == "le" else ")"
        raise Lm2vError(f"{what} must be in {left}{limits[low]}, {limits[high]}{right}, got {bad}")
    k = low or high
    raise Lm2vError(f"{what} must be {_RELATIONS[k][0]} {limits[k]}, got {bad}")
