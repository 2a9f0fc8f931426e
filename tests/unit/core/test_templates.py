"""Message templates (issue 15, templates part): compiled at start, sandboxed, strict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wa_trio.cli.main import main
from wa_trio.core.envelope import ValidationError, parse_envelope
from wa_trio.core.templates import TemplateError, TemplateProblem, TemplateSet

UID = "6b1d5e9c-2c1a-4d8c-9b8e-0a1b2c3d4e5f"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "order_shipped.txt").write_text("Hi {{ name }}, order {{ order }} has shipped.")
    (tmp_path / "order_shipped.pt_BR.txt").write_text("Olá {{ name }}, pedido {{ order }} enviado.")
    (tmp_path / "order_shipped.es.txt").write_text("Hola {{ name }}, pedido {{ order }} enviado.")
    (tmp_path / "otp.txt").write_text("Your code is {{ code }}")
    (tmp_path / "sneaky.txt").write_text("{{ name.__class__.__mro__ }}")
    (tmp_path / "long.txt").write_text("{{ name * 5000 }}")
    (tmp_path / "evil.txt").write_text("<script>{{ name }}</script>")
    return tmp_path


def _job(**fields: Any) -> bytes:
    body: dict[str, Any] = {"user_id": UID, "destination": "+5511999999999"}
    body.update(fields)
    return json.dumps(body).encode()


def test_render_with_language_variants_and_fallbacks(folder: Path) -> None:
    templates = TemplateSet.load(folder)
    params = {"name": "Ana", "order": 42}
    assert templates.render("order_shipped", params) == "Hi Ana, order 42 has shipped."
    assert templates.render("order_shipped", params, "pt_BR").startswith("Olá Ana")
    assert templates.render("order_shipped", params, "es_MX").startswith("Hola Ana")  # es
    assert templates.render("order_shipped", params, "de").startswith("Hi Ana")  # plain


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"name": "Ana"}, "missing order"),
        ({"name": "Ana", "order": 1, "extra": "x"}, "not used by the template: extra"),
        ({"name": {"nested": 1}, "order": 1}, "must be a string"),
        ({"name": True, "order": 1}, "must be a string"),
        ({"name": "x" * 2000, "order": 1}, "must be a string"),
        (["Ana", 42], "params must be an object"),
    ],
)
def test_bad_params_are_template_params_invalid(folder: Path, params: Any, detail: str) -> None:
    with pytest.raises(TemplateProblem) as info:
        TemplateSet.load(folder).render("order_shipped", params)
    assert info.value.code == "template_params_invalid"
    assert detail in info.value.message


def test_the_sandbox_refuses_python_internals(folder: Path) -> None:
    with pytest.raises(TemplateProblem) as info:
        TemplateSet.load(folder).render("sneaky", {"name": "x"})
    assert info.value.code == "template_params_invalid"


def test_an_unknown_template_is_template_not_found(folder: Path) -> None:
    with pytest.raises(TemplateProblem) as info:
        TemplateSet.load(folder).render("nope", {})
    assert info.value.code == "template_not_found"


def test_a_broken_template_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.txt").write_text("line one\nHi {{ name }\n")
    with pytest.raises(TemplateError) as info:
        TemplateSet.load(tmp_path)
    assert "broken.txt line 2" in info.value.message and "\n" not in info.value.message


def test_a_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "Bad Name.txt").write_text("x")
    with pytest.raises(TemplateError, match=r"NAME\.txt"):
        TemplateSet.load(tmp_path)


def test_a_templated_job_obeys_every_text_rule(folder: Path) -> None:
    templates = TemplateSet.load(folder)
    envelope = parse_envelope(_job(template="otp", params={"code": "123456"}), templates=templates)
    assert envelope.text_message == "Your code is 123456"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"template": "long", "params": {"name": "ab"}}, "text_too_long"),
        ({"template": "evil", "params": {"name": "x"}}, "content_rejected"),
        ({"template": "otp", "params": {"code": 1}, "text_message": "hi"}, "wrong_type"),
        ({"template": 5}, "wrong_type"),
        ({"template": "nope"}, "template_not_found"),
        ({"template": "otp"}, "template_params_invalid"),
    ]
    for fields, code in cases:
        with pytest.raises(ValidationError) as info:
            parse_envelope(_job(**fields), templates=templates)
        assert info.value.code == code, fields


def test_without_templates_a_templated_job_is_template_not_found() -> None:
    with pytest.raises(ValidationError) as info:
        parse_envelope(_job(template="otp", params={"code": "1"}))
    assert info.value.code == "template_not_found"


def test_cli_lists_renders_and_checks(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHATSAPP_TEMPLATES_DIR", str(folder))
    assert main(["templates", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    otp = {"name": "otp", "language": None, "params": ["code"], "optional": [], "file": "otp.txt"}
    assert otp in listed
    assert main(["templates", "render", "otp", "--params", '{"code": "9"}']) == 0
    assert capsys.readouterr().out == "Your code is 9\n"
    assert main(["templates", "render", "otp", "--params", "{}"]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "template_params_invalid"
    (folder / "broken.txt").write_text("{% if %}")
    assert main(["check"]) == 2
    assert "broken.txt line 1" in capsys.readouterr().err


def test_the_published_job_schema_agrees_with_the_worker(folder: Path) -> None:
    """The job schema (web/job.schema.json, served in /openapi.json) accepts what the worker
    accepts, and refuses text + template."""
    import jsonschema

    schema = json.loads(
        (Path(__file__).parents[3] / "src" / "wa_trio" / "web" / "job.schema.json").read_text()
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    templates = TemplateSet.load(folder)
    accepted: list[dict[str, Any]] = [
        {"text_message": "hi"},
        {"text_message": "hi", "send_at": "2030-01-01T00:00:00Z", "ttl_seconds": 60},
        {"template": "otp", "params": {"code": "1"}, "language": "pt_BR"},
    ]
    for fields in accepted:
        job = {"user_id": UID, "destination": "+55 11 99999-9999", **fields}
        jsonschema.validate(job, schema)
        parse_envelope(json.dumps(job).encode(), templates=templates)
    both = {"user_id": UID, "destination": "+5511999999999", "text_message": "a", "template": "otp"}
    try:
        jsonschema.validate(both, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema accepted text_message and template together")


@pytest.mark.parametrize(
    ("source", "optional"),
    [
        ("{% if coupon %}Use {{ coupon }}.{% endif %}Hi {{ name }}", {"coupon"}),
        ("{% if vip %}Hi {{ name }}{% endif %}", {"vip"}),  # name not tested: required
        ("{% if a %}{{ a }}{% elif b %}{{ b }}{% else %}{{ c }}{% endif %}", {"a", "b"}),
        ("{{ coupon }}{% if coupon %}!{% endif %}", set()),  # used outside the if too
        ("{% if a %}{% if b %}{{ a }}{{ b }}{% endif %}{% endif %}", {"a", "b"}),
        ("{% for x in items %}{{ x }}{% endfor %}", set()),
    ],
)
def test_variables_used_only_under_an_if_that_tests_them_are_optional(
    tmp_path: Path, source: str, optional: set[str]
) -> None:
    (tmp_path / "t.txt").write_text(source)
    assert set(TemplateSet.load(tmp_path).pick("t", None).optional) == optional


def test_an_optional_variable_may_be_left_out(tmp_path: Path) -> None:
    """Issue 30: a template that mentions a variable only inside ``{% if %}`` required it."""
    (tmp_path / "greet.txt").write_text(
        "Hi {{ name }}.{% if coupon %} Use {{ coupon }}.{% endif %}"
    )
    templates = TemplateSet.load(tmp_path)
    assert templates.render("greet", {"name": "Ana"}) == "Hi Ana."
    assert templates.render("greet", {"name": "Ana", "coupon": "X1"}) == "Hi Ana. Use X1."
    with pytest.raises(TemplateProblem, match="missing name"):
        templates.render("greet", {"coupon": "X1"})
