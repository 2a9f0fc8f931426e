"""The shape of a job's ``cloud_template`` (pure): a Cloud API approved message template.

Meta checks a template's content (that it exists, is approved, that the parameters match);
we check the shape before spending a send, so a malformed one is dead-lettered
``cloud_template_invalid`` with the reason, not retried:

    {"name": "order_shipped", "language": "pt_BR",
     "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]}

``components`` is optional (a template without variables) and passed to Meta as given once
its shape is right: ``type`` of each component and parameter from Meta's closed lists,
buttons with ``sub_type`` and ``index``, bounded sizes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

NAME = re.compile(r"[a-z0-9_]{1,512}")
LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
COMPONENT_TYPES = frozenset({"header", "body", "button", "footer"})
PARAMETER_TYPES = frozenset(
    {
        "text",
        "currency",
        "date_time",
        "image",
        "document",
        "video",
        "location",
        "payload",
        "coupon_code",
        "action",
    }
)
BUTTON_SUB_TYPES = frozenset({"quick_reply", "url", "copy_code", "flow", "catalog", "otp"})
MAX_COMPONENTS = 20
MAX_PARAMETERS = 100
MAX_JSON_BYTES = 16_384


@attrs.frozen
class TemplateShapeError(Exception):
    reason: str


def check(value: Any) -> dict[str, Any]:
    """The template, normalised to ``{name, language, components?}``.

    Raises:
        TemplateShapeError: the reason, for the dead-letter header.
    """
    if not isinstance(value, dict):
        raise TemplateShapeError("cloud_template must be an object")
    if set(value) - {"name", "language", "components"}:
        raise TemplateShapeError("cloud_template may hold only name, language and components")
    name, language = value.get("name"), value.get("language")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise TemplateShapeError("name must be 1-512 of a-z, 0-9 and _ (Meta's template names)")
    if not isinstance(language, str) or not LANGUAGE.fullmatch(language):
        raise TemplateShapeError("language must be a code like en, en_US or pt_BR")
    shaped: dict[str, Any] = {"name": name, "language": language}
    components = value.get("components")
    if components is None:
        return shaped
    if not isinstance(components, list) or len(components) > MAX_COMPONENTS:
        raise TemplateShapeError(f"components must be a list of at most {MAX_COMPONENTS}")
    for index, component in enumerate(components):
        _component(index, component)
    if len(json.dumps(components, ensure_ascii=False).encode()) > MAX_JSON_BYTES:
        raise TemplateShapeError(f"components are larger than {MAX_JSON_BYTES} bytes")
    shaped["components"] = components
    return shaped


def _component(index: int, component: Any) -> None:
    where = f"components[{index}]"
    if not isinstance(component, dict) or not _one_of(component.get("type"), COMPONENT_TYPES):
        raise TemplateShapeError(f"{where}.type must be one of {sorted(COMPONENT_TYPES)}")
    if component["type"] == "button":
        if not _one_of(component.get("sub_type"), BUTTON_SUB_TYPES):
            raise TemplateShapeError(f"{where}.sub_type must be one of {sorted(BUTTON_SUB_TYPES)}")
        if not _button_index(component.get("index")):
            raise TemplateShapeError(f"{where}.index must be a button position 0-9")
    parameters = component.get("parameters", [])
    if not isinstance(parameters, list) or len(parameters) > MAX_PARAMETERS:
        raise TemplateShapeError(f"{where}.parameters must be a list of at most {MAX_PARAMETERS}")
    for number, parameter in enumerate(parameters):
        if not isinstance(parameter, dict) or not _one_of(parameter.get("type"), PARAMETER_TYPES):
            raise TemplateShapeError(
                f"{where}.parameters[{number}].type must be one of {sorted(PARAMETER_TYPES)}"
            )
        kind = parameter["type"]
        if kind == "text" and not isinstance(parameter.get("text"), str):
            raise TemplateShapeError(f"{where}.parameters[{number}].text must be a string")


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    """``value`` is one of ``allowed`` (a list or an object is not: never hashed)."""
    return isinstance(value, str) and value in allowed


def _button_index(value: Any) -> bool:
    """A button position: 0-9 as an int or one ASCII digit (``"²"`` is a digit to
    ``str.isdigit`` but not to ``int``)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 10
    return isinstance(value, str) and len(value) == 1 and "0" <= value <= "9"


__all__ = ["TemplateShapeError", "check"]
