"""Fusion heads: a name -> class registry (`HEADS`, a migfuse.registry.Registry) and `make_head`.

    from migfuse.fuse.heads import make_head, list_heads, head_defaults
    model = make_head("cmtf", shapes={"video": (9, 768), "joint": (14, 256), "bone": (14, 256)},
                      num_classes=32, width=96)
    logits = model(batch)        # batch: {"video": (B, 9, 768), "video_mask": (B, 9), ...} -> (B, 32)

Every head is a `FusionHead`: it declares the inputs it reads (`required_inputs`), takes the
per-sample token shapes of those inputs, and maps a batch dict to logits. Options are the head's
commented ``DEFAULTS`` dict overridden by the run config; an unknown option is refused.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

from torch import nn

from migfuse.errors import UserError
from migfuse.registry import Registry


class FusionHead(nn.Module):
    """Base class: `forward(batch) -> logits (B, num_classes)`.

    `batch` maps an input name to tokens, (B, N, D) per clip or (B, W, N, D) per video (W windows),
    and ``<name>_mask`` to the matching bool mask without the last axis (True = real token).
    """

    #: Options and their defaults; subclasses comment every key.
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: (video side, pose side, test file) of the input pairs the test suite ran end to end through
    #: this head; `migfuse fuse heads` lists them (a fusion head says honestly which pairs were tried).
    tried_pairs: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    @classmethod
    def required_inputs(cls, options: Mapping[str, Any]) -> list[str]:
        """Names of the inputs (cache modalities) this head reads with these options."""
        raise NotImplementedError

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], num_classes: int, options: Mapping[str, Any]
                 ) -> None:
        super().__init__()
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.num_classes = num_classes
        self.options = dict(options)


#: Head name -> FusionHead subclass; the built-in heads register themselves when their module is imported.
HEADS: Registry[type[FusionHead]] = Registry("head")


def register_head(name: str) -> Callable[[type[FusionHead]], type[FusionHead]]:
    """Class decorator: make a `FusionHead` subclass available to `make_head(name, ...)`.

    Raises:
        ValueError: `name` is registered already (two heads of one name are a bug).
    """

    def wrap(cls: type[FusionHead]) -> type[FusionHead]:
        HEADS.register(name, cls)
        cls.name = name
        return cls

    return wrap


def _load_builtin() -> None:
    # Importing the modules runs their @register_head decorators.
    from migfuse.fuse.heads import cmtf, interfusion, single  # noqa: F401


def list_heads() -> list[str]:
    """Registered head names, sorted."""
    _load_builtin()
    return HEADS.names()


def head_class(name: str) -> type[FusionHead]:
    """The class registered as `name` (UserError naming the choices when unknown)."""
    _load_builtin()
    return HEADS.get(name)


#: Ranges of the options the built-in heads share (as migfuse.training.config.RANGES). Sizes are bounded
#: to catch typos: at the bounds a head has ~0.3 G weights (~5 GB with AdamW's state), far above any head
#: on cached tokens needs; every "*dropout" option is a probability < 1.
OPTION_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "width": (1, 1024, True, True),
    "depth": (0, 8, True, True),
    "heads": (1, 64, True, True),
    "ffn_mult": (1, 8, True, True),
}
DROPOUT_RANGE = (0, 1, True, False)


def resolve_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The head's DEFAULTS overridden by `options`, checked: UserError (one line) on a key the head does
    not know, a value of another type than its default, a size or dropout out of range, or a width
    that its attention heads do not divide."""
    from migfuse.training.config import check_range, check_value

    cls = head_class(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.DEFAULTS))
    if unknown:
        raise UserError(f"head {name!r} has no option {unknown[0]!r}; its options are {', '.join(cls.DEFAULTS)} "
                        f"(fix the \"head_options\" of the config)")
    where = f"head_options of {name}"
    options = {k: check_value(k, v, cls.DEFAULTS[k], where) for k, v in options.items()}
    for key, value in options.items():  # list options name cache inputs: a head without inputs cannot run
        if isinstance(value, list) and not (value and all(isinstance(v, str) and v for v in value)):
            raise UserError(f"{where}: {key} must be a list of input names, e.g. {cls.DEFAULTS[key]!r}, not {value!r}")
    resolved = {**cls.DEFAULTS, **options}
    ranges = {**OPTION_RANGES, **{k: DROPOUT_RANGE for k in resolved if k.endswith("dropout")}}
    for key, value in resolved.items():
        check_range(key, value, where, ranges)
    if "width" in resolved and "heads" in resolved and resolved["width"] % resolved["heads"]:
        raise UserError(f"{where}: width {resolved['width']} must be a multiple of heads {resolved['heads']} "
                        "(each attention head takes width / heads channels)")
    return resolved


def head_defaults(name: str) -> dict[str, Any]:
    """A copy of the head's default options."""
    return dict(head_class(name).DEFAULTS)


def make_head(name: str, shapes: Mapping[str, tuple[int, ...]], num_classes: int, **options: Any) -> FusionHead:
    """Build head `name` for inputs of per-sample token `shapes` ((N, D) or (W, N, D) per input)."""
    cls = head_class(name)
    resolved = resolve_options(name, options)
    missing = [k for k in cls.required_inputs(resolved) if k not in shapes]
    if missing:
        raise UserError(f"head {name!r} needs input {missing[0]!r} but the run provides {', '.join(shapes) or 'none'}; "
                        f"add it to \"inputs\" in the config or choose another head")
    return cls(shapes, num_classes, resolved)
