"""Training settings: a trainer's commented DEFAULTS <- `--config FILE` (JSON/TOML) <- `--set k=v` <- flags.

    from migfuse.training.config import resolve_config
    cfg = resolve_config(DEFAULTS, config_file="my.toml", sets=["lr=3e-4", "head_options.width=128"],
                         flags={"epochs": 5, "lr": None})       # None = flag not given

Every layer is checked against DEFAULTS: an unknown key or a value of the wrong type is a one-line
`UserError` naming where it came from (the file, `--set`, or the option), the key and the type the
default has (`my.json: lr must be a number (float like the default 0.001), not 'fast'`); a shared
setting out of its range (`RANGES`: lr finite and > 0, 0 <= label_smoothing < 1...) too. A dict-valued
setting (e.g. "head_options") is merged key by key; its inner keys are the trainer's to check.
Torch-free: the CLI may import it.
"""
from __future__ import annotations

import json
import logging
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from migfuse.errors import UserError
from migfuse.training.recipe import upgrade_settings

log = logging.getLogger(__name__)

#: Keys of a run folder's config.json that are not settings: reading one back as --config is allowed.
_RUN_FILE_KEYS = ("trainer", "provenance", "versions", "git_commit", "started", "ended", "resumed", "command",
                  "format")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON (`.json`) or TOML (`.toml`) file, or from a run folder's config.json.

    UserError naming the file when it is missing, unreadable, not an object/table, or of another type."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check the --config path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} cannot be read ({e}); pass a UTF-8 JSON or TOML file") from None
    if path.suffix.lower() == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config file {path} is not valid TOML ({e}); fix it") from None
        except RecursionError:  # arrays nested thousands deep: no settings file is like that
            raise UserError(f"config file {path} is nested too deeply to be a settings file; fix it") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"config file {path} is not valid JSON ({e}); fix it (or name it .toml)") from None
        except RecursionError:
            raise UserError(f"config file {path} is nested too deeply to be a settings file; fix it") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a JSON object / TOML table of settings")
    if isinstance(data.get("run"), dict) and "trainer" in data["run"]:  # a run folder's config.json
        data = {k: v for k, v in data.items() if k != "run"}
    return {k: v for k, v in data.items() if k not in _RUN_FILE_KEYS}


def parse_value(text: str) -> Any:
    """A `--set` value: JSON when it parses (1, 0.5, true, null, [1,2], {"a":1}, "x"), else the text itself."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to be a setting: the text itself
        return text


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """`["lr=3e-4", "head_options.width=128"]` -> `{"lr": 0.0003, "head_options": {"width": 128}}`.

    UserError for an item without `=` or with an empty key."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. --set lr=3e-4 or --set head_options.width=128")
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {p} is set twice, once as a value and once as a table")
        node[leaf] = parse_value(value)
    return out


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, dict):
        return "a table / object"
    if isinstance(default, (list, tuple)):
        return "a list"
    return type(default).__name__


def check_value(key: str, value: Any, default: Any, where: str) -> Any:
    """`value` for setting `key` if it has the type of `default` (ints pass for floats, as floats).

    A default of None accepts anything (the trainer checks it). UserError otherwise."""
    if default is None:
        return value
    ok: bool
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        if ok:
            value = list(value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{where}: {key} must be {_type_name(default)} (like the default {default!r}), "
                        f"not {value!r}")
    return value


#: Seeds go to numpy (0 <= seed < 2**32) and torch: one range for every seed.
SEED_MAX = 2**32 - 1
#: Processes: more than 64 loader/converter processes only cost memory on any machine migfuse targets.
WORKERS_MAX = 64
#: Torch CPU threads: beyond 1024 torch refuses or thrashes; no machine here has more cores.
THREADS_MAX = 1024
#: Epochs: a typo guard (1e9); the longest published recipes run a few hundred.
EPOCHS_MAX = 10_000
#: Samples per step: a typo guard; 65,536 token sets already fill a GPU's memory.
BATCH_MAX = 65_536

#: Ranges of the settings the trainers share, by name: (low, high, low included, high included); a
#: trainer checks the ones it has, in every layer, so a bad value names its source before any work.
#: Counts are bounded to catch typos (1e9 epochs); probabilities and shares stay below 1.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0, math.inf, False, False),
    "epochs": (1, EPOCHS_MAX, True, True),
    "batch_size": (1, BATCH_MAX, True, True),
    "target_batch": (1, BATCH_MAX, True, True),
    "seed": (0, SEED_MAX, True, True),
    "weight_decay": (0, math.inf, True, False),
    "warmup_epochs": (0, math.inf, True, False),
    "label_smoothing": (0, 1, True, False),
    "balance_power": (0, math.inf, True, False),
    "grad_clip": (0, math.inf, True, False),
    "clip_grad": (0, math.inf, True, False),
    "patience": (0, EPOCHS_MAX, True, True),
    "val_fraction": (0, 1, True, False),
    "threads": (0, THREADS_MAX, True, True),
    "workers": (0, WORKERS_MAX, True, True),
    "drop_path": (0, 1, True, False),
    "head_dropout": (0, 1, True, False),
    "color_jitter": (0, 1, True, True),
    "min_lr_ratio": (0, 1, True, True),
    "layer_decay": (0, 1, False, True),
    "length": (4, 1024, True, True),
    "base_channels": (4, 1024, True, True),
    "frames": (1, 64, True, True),
}


def check_range(key: str, value: Any, where: str, ranges: Mapping[str, tuple] | None = None) -> None:
    """UserError naming `where` unless the number `value` of setting `key` is finite and inside its range
    (`ranges`, default RANGES; keys without a range and non-numbers pass)."""
    rule = (RANGES if ranges is None else ranges).get(key)
    if rule is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high, low_in, high_in = rule
    inside = (math.isfinite(value) and (low <= value if low_in else low < value)
              and (value <= high if high_in else value < high))
    if not inside:
        lo = f"{'>=' if low_in else '>'} {low}"
        hi = "" if high == math.inf else f" and {'<=' if high_in else '<'} {high}"
        raise UserError(f"{where}: {key} must be a finite number {lo}{hi}, not {value!r}")


def merge_layer(cfg: dict[str, Any], layer: Mapping[str, Any], defaults: Mapping[str, Any], where: str,
                optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`cfg` updated with `layer`, every key and type checked against `defaults`; dicts merge key by key.

    `optional` maps keys whose default is None to an example value giving their type (e.g. {"init": ""}).
    UserError naming `where` on an unknown key or a wrong type."""
    out = dict(cfg)
    optional = optional or {}
    for key, value in layer.items():
        if key not in defaults:
            raise UserError(f"{where}: unknown setting {key!r}; known settings are {', '.join(defaults)}")
        default = defaults[key]
        if default is None and key in optional and value is not None:
            value = check_value(key, value, optional[key], where)
        else:
            value = check_value(key, value, default, where)
        check_range(key, value, where)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


def resolve_config(defaults: Mapping[str, Any], *, base: Mapping[str, Any] | None = None,
                   config: Mapping[str, Any] | str | Path | None = None, sets: Iterable[str] = (),
                   flags: Mapping[str, Any] | None = None, optional: Mapping[str, Any] | None = None,
                   ignore: Iterable[str] = ()) -> dict[str, Any]:
    """DEFAULTS <- `base` (e.g. per-task defaults) <- `config` (dict or JSON/TOML file) <- `sets` <- `flags`.

    `flags` are CLI options by setting name; None values (option not given) are skipped. Keys in
    `ignore` are dropped from `config` (values a trainer writes into its own run's config, e.g. "task").
    Settings of earlier releases are put in today's words (`recipe.upgrade_settings`: balance "weights"
    is "loss"; device and precision are command options now), said in one warning line.
    Returns a new dict with every key of `defaults`. UserError (one line, naming the source) on a bad
    key or type."""
    ignore = set(ignore) | set(_RUN_FILE_KEYS)
    notes: list[str] = []

    def merge(cfg: dict[str, Any], layer: Mapping[str, Any], where: str) -> dict[str, Any]:
        layer, said = upgrade_settings(layer, defaults)
        notes.extend(f"{where}: {note}" for note in said)
        return merge_layer(cfg, layer, defaults, where, optional)

    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in defaults.items()}
    if base:
        cfg = merge_layer(cfg, base, defaults, "the trainer's defaults", optional)
    if isinstance(config, (str, Path)):
        cfg = merge(cfg, {k: v for k, v in load_config_file(config).items() if k not in ignore}, str(config))
    elif config:
        cfg = merge(cfg, {k: v for k, v in config.items() if k not in ignore}, "the config")
    sets = list(sets)
    if sets:
        cfg = merge(cfg, parse_sets(sets), "--set")
    if flags:
        for key, value in flags.items():
            if value is not None:
                cfg = merge(cfg, {key: value}, f"--{key.replace('_', '-')}")
    if notes:
        log.warning("settings of an earlier release: %s", "; ".join(notes))
    return cfg


def check_choice(cfg: Mapping[str, Any], key: str, choices: Iterable[str], where: str = "the config") -> None:
    """UserError unless cfg[key] is one of `choices`."""
    choices = tuple(choices)
    if cfg[key] not in choices:
        raise UserError(f"{where}: {key} must be one of {', '.join(map(str, choices))}, not {cfg[key]!r}")


def check_positive(cfg: Mapping[str, Any], keys: Iterable[str], where: str = "the config") -> None:
    """UserError unless every cfg[key] is > 0."""
    for key in keys:
        if not cfg[key] > 0:
            raise UserError(f"{where}: {key} must be greater than 0, not {cfg[key]!r}")
