"""The configuration reference, generated from the typed config (every field has a description).

README.md embeds it between markers; a test keeps the two identical, so the reference stays true.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

BEGIN = "<!-- config-reference:begin -->"
END = "<!-- config-reference:end -->"


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        base = args[0]
        if base is timedelta:
            return "duration (`90d`, `12h`, `30m`, `45s`)"
        if base is str:
            return "`module:function`" if ":[A-Za-z_]" in repr(args[1:]) else "str"
        return _type(base)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        inner = ", ".join(_type(a) for a in args if a is not Ellipsis)
        return f"list of {inner}" if origin is list else f"[{inner}]"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if annotation is timedelta:
        return "duration"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, timedelta):
        secs = int(value.total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if secs and secs % size == 0:
                return f"`{secs // size}{unit}`"
        return f"`{secs}s`"
    return f"`{json.dumps(value, default=str)}`"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _models(field.annotation)
        if nested and typing.get_origin(field.annotation) is not dict:
            out.append((key, "section", "", field.description or ""))
            out.extend(rows(nested[0], key + "."))
            continue
        if nested:  # dict[str, Model]
            out.append((f"{key}", "mapping", _default(field), field.description or ""))
            out.extend(rows(nested[0], f"{key}.<name>."))
            continue
        out.append((key, _type(field.annotation), _default(field), field.description or ""))
    return out


def config_reference() -> str:
    from loopline.config import LooplineConfig

    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, typ, default, desc in rows(LooplineConfig):
        lines.append(f"| `{key}` | {typ.replace('|', '/')} | {default.replace('|', '/')} | {desc.replace('|', '/')} |")
    return "\n".join(lines)


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the block between the markers in README.md; return True when it changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{config_reference()}\n{END}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README.md updated" if update_readme() else "README.md already current")
