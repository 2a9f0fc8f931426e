"""Message templates: one file a template in WHATSAPP_TEMPLATES_DIR, rendered for a job.

``order_shipped.txt`` is the template ``order_shipped``; ``order_shipped.pt_BR.txt`` its variant
for a job whose ``language`` is ``pt_BR`` (a job in another language, or none, gets the plain
file). Jinja2 syntax (``Olá {{ name }}``) in a ``SandboxedEnvironment`` with ``StrictUndefined``:
a template cannot reach Python internals, and a missing parameter is an error, never an empty
string in a customer's message. Parameters are plain values (strings and numbers), never
templates themselves. Every template is compiled at start-up: a broken one stops the worker with
one line naming the file and the line.

Rendering errors are ``ValidationError``s with a permanent code: ``template_not_found``,
``template_params_invalid`` (a missing or extra parameter, a non-plain value, a rendering
error). The rendered text then obeys every rule ``text_message`` obeys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from wa_trio.core.errors import WaTrioError

_NAME = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9_-]{0,63})(?:\.(?P<lang>[A-Za-z]{2,3}(?:_[A-Za-z]{2})?))?\.txt$"
)
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_PARAMS = 64
MAX_PARAM_CHARS = 1024


class TemplateError(WaTrioError):
    """A template file cannot be used (one line: the file, the line, what is wrong)."""

    code = "template_broken"


class TemplateProblem(WaTrioError):
    """A job's template cannot be rendered; ``code`` is a validation code."""


@attrs.frozen
class Template:
    name: str
    language: str | None
    path: Path
    params: frozenset[str]  # the variables it uses
    compiled: jinja2.Template = attrs.field(repr=False, eq=False)
    #: variables used only under an ``{% if name %}`` that tests them: optional (None when
    #: not given), so "{% if coupon %}Use {{ coupon }}{% endif %}" needs no coupon (issue 30)
    optional: frozenset[str] = frozenset()


def guarded_only(parsed: nodes.Template) -> frozenset[str]:
    """The variables every use of which is inside an ``{% if %}`` (or ``elif``) whose test
    names them, or is that test itself."""
    unguarded: set[str] = set()
    seen: set[str] = set()

    def walk(node: nodes.Node, guards: frozenset[str]) -> None:
        if isinstance(node, nodes.If):
            names = [node.test, *node.test.find_all(nodes.Name)]  # find_all skips the test itself
            tested = frozenset(n.name for n in names if isinstance(n, nodes.Name))
            seen.update(tested)  # a test of the name is a guarded use
            for child in node.body:
                walk(child, guards | tested)
            for branch in node.elif_:
                walk(branch, guards)
            for child in node.else_:
                walk(child, guards)
            return
        if isinstance(node, nodes.Name) and node.ctx == "load":
            seen.add(node.name)
            if node.name not in guards:
                unguarded.add(node.name)
        for child in node.iter_child_nodes():
            walk(child, guards)

    walk(parsed, frozenset())
    return frozenset(seen - unguarded)


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )


@attrs.frozen
class TemplateSet:
    templates: Mapping[tuple[str, str | None], Template] = attrs.field(factory=dict)

    @classmethod
    def load(cls, folder: Path | None) -> TemplateSet:
        """Compile every ``*.txt`` of ``folder`` (None: no templates).

        Raises:
            TemplateError: the folder cannot be read, or a file is not a usable template.
        """
        if folder is None:
            return cls()
        if not folder.is_dir():
            raise TemplateError(f"WHATSAPP_TEMPLATES_DIR={folder}: not a folder")
        env = _environment()
        found: dict[tuple[str, str | None], Template] = {}
        for path in sorted(folder.glob("*.txt")):
            match = _NAME.match(path.name)
            if match is None:
                raise TemplateError(
                    f"{path}: a template file is named NAME.txt or NAME.LANG.txt "
                    "(NAME: a-z 0-9 _ -; LANG: like pt or pt_BR)"
                )
            try:
                data = path.read_bytes()
                if len(data) > MAX_TEMPLATE_BYTES:
                    raise TemplateError(f"{path}: larger than {MAX_TEMPLATE_BYTES} bytes")
                source = data.decode("utf-8")
                parsed = env.parse(source)
                compiled = env.from_string(source)
            except UnicodeDecodeError:
                raise TemplateError(f"{path}: not UTF-8 text") from None
            except jinja2.TemplateSyntaxError as error:
                raise TemplateError(f"{path} line {error.lineno}: {error.message}") from None
            except OSError as error:
                raise TemplateError(f"{path}: {error.strerror}") from None
            key = (match["name"], match["lang"])
            params = frozenset(meta.find_undeclared_variables(parsed))
            found[key] = Template(
                match["name"],
                match["lang"],
                path,
                params,
                compiled,
                guarded_only(parsed) & params,
            )
        return cls(found)

    def names(self) -> list[Template]:
        return [
            self.templates[key] for key in sorted(self.templates, key=lambda k: (k[0], k[1] or ""))
        ]

    def pick(self, name: str, language: str | None) -> Template:
        """The variant for ``language`` (``pt_BR``, then ``pt``), else the plain file."""
        candidates: list[tuple[str, str | None]] = []
        if language:
            candidates += [(name, language), (name, language.split("_", 1)[0])]
        candidates.append((name, None))
        for key in candidates:
            if key in self.templates:
                return self.templates[key]
        raise TemplateProblem(f"no template named {name!r}", code="template_not_found")

    def render(self, name: str, params: Any, language: str | None = None) -> str:
        """The text of template ``name`` for ``params``.

        Raises:
            TemplateProblem: ``template_not_found`` or ``template_params_invalid``.
        """
        template = self.pick(name, language)
        if not isinstance(params, dict):
            raise TemplateProblem("params must be an object", code="template_params_invalid")
        if len(params) > MAX_PARAMS:
            raise TemplateProblem("too many params", code="template_params_invalid")
        for key, value in params.items():
            plain = isinstance(value, str | int | float) and not isinstance(value, bool)
            if not plain or (isinstance(value, str) and len(value) > MAX_PARAM_CHARS):
                raise TemplateProblem(
                    f"param {str(key)[:64]!r} must be a string (at most {MAX_PARAM_CHARS} "
                    "characters) or a number",
                    code="template_params_invalid",
                )
        missing = sorted(template.params - template.optional - params.keys())
        extra = sorted(params.keys() - template.params)
        if missing or extra:
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"not used by the template: {', '.join(str(k)[:64] for k in extra)}"
                    if extra
                    else "",
                )
                if part
            )
            raise TemplateProblem(f"template {name!r}: {detail}", code="template_params_invalid")
        try:
            unset = dict.fromkeys(template.optional - params.keys())  # None: the if is false
            return template.compiled.render(**unset, **params)
        except Exception as error:  # noqa: BLE001 - any failure of a render is the params'
            # undefined attribute, sandbox refusal, and the everyday ones: a filter given the
            # wrong type ("%.2f"|format("12.50"), |round on a string), a division by zero,
            # range() over MAX_RANGE, an int too long to print
            raise TemplateProblem(
                f"template {name!r} could not be rendered with these params: "
                f"{type(error).__name__}",
                code="template_params_invalid",
            ) from None


__all__ = ["Template", "TemplateError", "TemplateProblem", "TemplateSet"]
