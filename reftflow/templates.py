"""`{{ item.<field> }}` / `{{ sample.output_text }}` templates (OpenAI grader template syntax), for
graders and for prompts (`data.prompt_template`).

Only dotted paths are allowed (no expressions, filters or calls): a template is data, never code.
`sample.output_json` is the output text parsed as JSON (OpenAI's name); list elements by index (`item.choices.0`).
"""

from __future__ import annotations

import json
import re
from typing import Any

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
_PATH = re.compile(r"^(item|sample)((?:\.(?:[A-Za-z_][\w-]*|\d+))+)$")
_SAMPLE_FIELDS = ("output_text", "output_json")
_MISSING = object()


class TemplateSyntaxError(ValueError):
    pass


class MissingField(Exception):
    """A reference to a field the item (or the JSON output) does not have: that sample's failure."""


class Template:
    """A compiled template: literal text and (root, path) references, rendered per sample."""

    __slots__ = ("source", "parts", "_single")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise TemplateSyntaxError(f"expected a string, got {type(source).__name__}")
        self.source = source
        parts: list[str | tuple[str, tuple[str, ...]]] = []
        pos = 0
        for m in _TAG.finditer(source):
            if m.start() > pos:
                parts.append(source[pos : m.start()])
            expr = m.group(1).strip()
            found = _PATH.match(expr)
            if not found:
                raise TemplateSyntaxError(
                    f"'{{{{ {expr} }}}}' is not a template reference (expected {{{{ item.<field> }}}} "
                    "or {{ sample.output_text }})"
                )
            root, path = found.group(1), tuple(found.group(2)[1:].split("."))
            if root == "sample" and path[0] not in _SAMPLE_FIELDS:
                raise TemplateSyntaxError(
                    f"'{{{{ {expr} }}}}': sample has no field '{path[0]}' (expected output_text or output_json)"
                )
            if root == "sample" and path[0] == "output_text" and len(path) > 1:
                raise TemplateSyntaxError(f"'{{{{ {expr} }}}}': output_text is a string and has no fields")
            parts.append((root, path))
            pos = m.end()
        rest = source[pos:]
        if "{{" in rest or "}}" in rest:
            raise TemplateSyntaxError(f"unbalanced '{{{{' or '}}}}' in {source!r}")
        if rest:
            parts.append(rest)
        self.parts = tuple(parts)
        # the common case `{{ sample.output_text }}` skips the join
        self._single = self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], tuple) else None

    def item_fields(self) -> set[str]:
        return {p[1][0] for p in self.parts if isinstance(p, tuple) and p[0] == "item"}

    def render(self, output_text: str, item: dict) -> str:
        single = self._single
        if single is not None:
            if single[0] == "sample" and single[1][0] == "output_text":
                return output_text
            return _to_text(_lookup(single, output_text, item))
        out = []
        for part in self.parts:
            out.append(part if isinstance(part, str) else _to_text(_lookup(part, output_text, item)))
        return "".join(out)


def _lookup(ref: tuple[str, tuple[str, ...]], output_text: str, item: dict) -> Any:
    root, path = ref
    if root == "sample":
        if path[0] == "output_text":
            return output_text
        try:
            value: Any = json.loads(output_text)
        except ValueError:
            raise MissingField(f"{{{{ sample.{'.'.join(path)} }}}}: the output is not JSON") from None
        rest = path[1:]
    else:
        value, rest = item, path
    walked = root + (".output_json" if root == "sample" else "")
    for key in rest:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, (list, tuple)) and key.isdigit():
            value = value[int(key)] if int(key) < len(value) else _MISSING
        else:
            value = _MISSING
        if value is _MISSING:
            raise MissingField(f"{{{{ {root}.{'.'.join(path)} }}}}: {walked} has no field '{key}'")
        walked += "." + key
    return value


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
