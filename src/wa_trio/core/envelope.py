"""The job model and its validation (pure: bytes in, envelope or ValidationError out).

The wire format is the original worker's: a JSON object with ``user_id`` (UUID),
``text_message`` (1-4096 characters) and ``destination`` (international number). Unknown fields
are ignored. cattrs structures the object (one converter, built here); our rules then check
content. Every rejection is a ``ValidationError`` with a stable ``code`` (see ``CODES``).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from wa_trio.core import cloud_template
from wa_trio.core.content_filter import check_content
from wa_trio.core.destination import DestinationProblem, e164
from wa_trio.core.errors import WaTrioError
from wa_trio.core.headers import utf8_ok
from wa_trio.core.instants import LocalTimeError, rfc3339
from wa_trio.core.media_rules import MediaProblem, MediaSpec, parse_media
from wa_trio.core.templates import TemplateProblem, TemplateSet

MAX_TEXT_CHARS = 4096

CODES: dict[str, str] = {
    "invalid_encoding": "the body is not valid UTF-8",
    "invalid_json": "the body is not valid JSON",
    "wrong_type": "the JSON is not an object, or a field has the wrong type",
    "missing_field": "a required field is missing",
    "invalid_user_id": "user_id is not a UUID",
    "invalid_destination": "destination is not an international phone number or a group JID",
    "empty_text": "text_message is empty (or only whitespace and invisible characters)",
    "text_too_long": f"text_message is longer than {MAX_TEXT_CHARS} characters",
    "content_rejected": "text_message matches the SQL-injection / XSS content policy",
    "template_not_found": "the job names a template the worker does not have",
    "template_params_invalid": "the template's params are missing, extra, or not plain values",
    "invalid_schedule": "send_at is not an RFC 3339 time with an offset",
    "schedule_too_far": "send_at is further ahead than WHATSAPP_SCHEDULE_MAX",
    "invalid_media": "media is not a well-formed media object (docs/media.md)",
    "media_too_large": "the media is larger than its cap",
    "media_unsupported": "WhatsApp does not take this type for this kind",
    "media_type_mismatch": "the bytes are not what kind / mime_type claim",
    "media_not_found": "the media URL answered 404, 410 or another permanent error",
    "media_url_refused": "the media URL resolves to a private or metadata address (or redirects "
    "too often)",
    "media_fetch_failed": "the media could not be fetched (retried)",
    "cloud_template_invalid": "cloud_template is not a well-formed Cloud API template",
    "cloud_template_unsupported": "cloud_template needs WHATSAPP_TRANSPORT=cloud-api (or dry-run)",
    "invalid_expiry": "expires_at is not an RFC 3339 time with an offset, or ttl_seconds is not "
    "a whole number of seconds from 1 to 31536000",
}


class ValidationError(WaTrioError):
    """The job can never be sent as it is. ``code`` is one of ``CODES``."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(message, code=code)


@attrs.frozen
class WhatsAppEnvelope:
    """A validated job: ``destination`` is in E.164 form (``+`` and digits).

    ``expires_at`` (aware) and ``ttl_seconds`` are the optional expiry of a job whose message
    stops being true (a one-time code): see ``expiry.py``.
    """

    user_id: uuid.UUID
    text_message: str
    destination: str
    expires_at: datetime | None = None
    ttl_seconds: int | None = None
    send_at: datetime | None = None
    #: a Cloud API template (``cloud_template.check``'s shape); text_message is "" then
    cloud_template: dict[str, Any] | None = attrs.field(default=None, hash=False)
    #: media to send (``text_message`` is its caption; "" for none)
    media: MediaSpec | None = None

    @property
    def group(self) -> bool:
        return self.destination.endswith("@g.us")


@attrs.frozen
class _WireEnvelope:
    """What the JSON must hold, before our content rules (types only)."""

    user_id: str
    text_message: str
    destination: str
    expires_at: Any = None  # checked by hand (_expiry): cattrs would coerce
    ttl_seconds: Any = None
    send_at: Any = None


MAX_TTL_SECONDS = 365 * 86400


def _instant(value: Any, code: str) -> datetime | None:
    """An RFC 3339 time with an offset (None stays None; ``instants.rfc3339``).

    Raises:
        ValidationError: ``code``.
    """
    if value is None:
        return None
    try:
        return rfc3339(value)
    except LocalTimeError:
        raise ValidationError(
            code, "the time needs an offset (Z or +hh:mm): a local time is ambiguous"
        ) from None
    except ValueError:
        raise ValidationError(code, CODES[code]) from None


def _expiry(expires_at: Any, ttl_seconds: Any) -> tuple[datetime | None, int | None]:
    """The optional expiry fields, strictly typed.

    Raises:
        ValidationError: ``invalid_expiry``.
    """
    when = _instant(expires_at, "invalid_expiry")
    ttl: int | None = None
    if ttl_seconds is not None:
        if (
            isinstance(ttl_seconds, bool)
            or not isinstance(ttl_seconds, int)
            or not 1 <= ttl_seconds <= MAX_TTL_SECONDS
        ):
            raise ValidationError("invalid_expiry", CODES["invalid_expiry"])
        ttl = ttl_seconds
    return when, ttl


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


_converter = make_converter(forbid_extra_keys=False)
_converter.register_structure_hook(str, _strict_str)


def clean_destination(raw: str) -> str:
    """The destination in E.164 form (``destination.e164``: ``+`` with punctuation, a WhatsApp
    JID, or bare international digits).

    Raises:
        ValidationError: ``invalid_destination``.
    """
    try:
        return e164(raw)
    except DestinationProblem as problem:
        raise ValidationError("invalid_destination", str(problem)) from None


_GROUP = re.compile(r"\d{5,30}(-\d{5,20})?@g\.us")


def clean_recipient(raw: str) -> str:
    """A phone number (``clean_destination``) or a group JID (``<digits>@g.us``, or the older
    ``<digits>-<digits>@g.us``).

    Raises:
        ValidationError: ``invalid_destination``.
    """
    if raw.strip().endswith("@g.us"):
        cleaned = raw.strip()
        if not _GROUP.fullmatch(cleaned):
            raise ValidationError(
                "invalid_destination",
                "a group destination is <digits>@g.us or <digits>-<digits>@g.us",
            )
        return cleaned
    return clean_destination(raw)  # a number, also as a person's JID (@s.whatsapp.net, @c.us)


def parse_envelope(
    body: bytes,
    *,
    content_filter: bool = True,
    templates: TemplateSet | None = None,
    cloud_templates: bool = False,
    media_inline_max: int = 1_000_000,
) -> WhatsAppEnvelope:
    """Decode and validate one job body.

    Raises:
        ValidationError: with one of ``CODES``; never any other exception.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("invalid_encoding", CODES["invalid_encoding"]) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ValidationError("invalid_json", CODES["invalid_json"]) from None
    if not isinstance(data, dict):
        raise ValidationError("wrong_type", f"the job must be a JSON object, not {_kind(data)}")
    if not _all_encodable(data):
        raise ValidationError("invalid_encoding", "a string of the job holds an unpaired surrogate")
    media = None
    if "media" in data:
        media = _media(data, media_inline_max)
        data = {**data, "text_message": data.get("text_message", "")}
    data, cloud = _text_forms(data, templates, cloud_templates)
    wire = _structure(data)
    for value in (wire.user_id, wire.text_message, wire.destination):
        if not utf8_ok(value):
            raise ValidationError("invalid_encoding", "a field holds an unpaired surrogate")
    try:
        user_id = uuid.UUID(wire.user_id)
    except ValueError:
        raise ValidationError("invalid_user_id", CODES["invalid_user_id"]) from None
    destination = clean_recipient(wire.destination)
    alone = (cloud is not None or media is not None) and wire.text_message == ""
    if not alone:
        validate_text(wire.text_message, content_filter=content_filter)
    expires_at, ttl_seconds = _expiry(wire.expires_at, wire.ttl_seconds)
    send_at = _instant(wire.send_at, "invalid_schedule")
    return WhatsAppEnvelope(
        user_id=user_id,
        text_message=wire.text_message,
        destination=destination,
        expires_at=expires_at,
        ttl_seconds=ttl_seconds,
        send_at=send_at,
        cloud_template=cloud,
        media=media,
    )


def _text_forms(
    data: dict[str, Any], templates: TemplateSet | None, cloud_templates: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The job with its ``template`` rendered into ``text_message`` (``""`` for a Cloud API
    template alone), and its ``cloud_template``, if any."""
    cloud = _cloud_template(data, allowed=cloud_templates) if "cloud_template" in data else None
    if "template" in data:
        return _with_rendered_template(data, templates), cloud
    if cloud is not None and "text_message" not in data:
        return {**data, "text_message": ""}, cloud
    return data, cloud


def _media(data: dict[str, Any], inline_max: int) -> MediaSpec:
    if "cloud_template" in data:
        raise ValidationError("wrong_type", "a job carries media or cloud_template, not both")
    try:
        spec = parse_media(data["media"], inline_max=inline_max)
    except MediaProblem as problem:
        raise ValidationError(problem.code, problem.message) from None
    text = data.get("text_message")
    if text and spec.kind in {"audio", "voice", "sticker"}:
        raise ValidationError(
            "invalid_media", f"a {spec.kind} takes no caption: send the text as its own job"
        )
    return spec


def _cloud_template(data: dict[str, Any], *, allowed: bool) -> dict[str, Any]:
    """The job's Cloud API template. Beside a ``text_message`` or a ``template`` it is the
    form a Cloud API account sends (the pool's choice, or WHATSAPP_FALLBACK), and a neonize
    account sends the text; alone it needs a transport that sends it (``allowed``)."""
    if "text_message" in data and "template" in data:
        raise ValidationError("wrong_type", "give text_message or template, not both")
    if not allowed and not (data.get("text_message") or "template" in data):
        raise ValidationError("cloud_template_unsupported", CODES["cloud_template_unsupported"])
    try:
        return cloud_template.check(data["cloud_template"])
    except cloud_template.TemplateShapeError as error:
        raise ValidationError("cloud_template_invalid", error.reason) from None


# characters that render as nothing: a text made only of them (and whitespace) is empty
_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u2028-\u202f\u205f-\u206f\ufeff\u00ad\u034f\u180e]*")


def _with_rendered_template(data: dict[str, Any], templates: TemplateSet | None) -> dict[str, Any]:
    """The job with ``text_message`` rendered from ``template`` + ``params`` (+ ``language``)."""
    if "text_message" in data:
        raise ValidationError("wrong_type", "give text_message or template, not both")
    name, language = data["template"], data.get("language")
    if not isinstance(name, str) or not (language is None or isinstance(language, str)):
        raise ValidationError("wrong_type", "template and language must be strings")
    if templates is None or not templates.templates:
        raise ValidationError(
            "template_not_found", "this worker has no templates (WHATSAPP_TEMPLATES_DIR is unset)"
        )
    try:
        text = templates.render(name[:64], data.get("params", {}), language and language[:8])
    except TemplateProblem as problem:
        raise ValidationError(problem.code, problem.message) from None
    return {**data, "text_message": text}


def validate_text(text: str, *, content_filter: bool) -> None:
    if _INVISIBLE.fullmatch(text):
        raise ValidationError("empty_text", CODES["empty_text"])
    if len(text) > MAX_TEXT_CHARS:
        raise ValidationError(
            "text_too_long", f"text_message has {len(text)} characters, at most {MAX_TEXT_CHARS}"
        )
    if content_filter:
        verdict = check_content(text)
        if not verdict.allowed:
            raise ValidationError(
                "content_rejected", f"text_message rejected by content policy rule {verdict.rule}"
            )


def _structure(data: dict[str, Any]) -> _WireEnvelope:
    try:
        return _converter.structure(data, _WireEnvelope)
    except cattrs.ClassValidationError as group:
        with_notes, _ = group.group_exceptions()
        missing = [note.name for exc, note in with_notes if isinstance(exc, KeyError)]
        details = "; ".join(cattrs.transform_error(group))
        if missing:
            raise ValidationError(
                "missing_field", f"missing field(s) {', '.join(missing)}: {details}"
            ) from None
        raise ValidationError("wrong_type", details) from None


def _all_encodable(data: Any) -> bool:
    """Every string of the decoded JSON (keys too, at any depth) encodes as UTF-8: JSON's
    ``\\ud800`` escapes decode to lone surrogates, which every later encode (SQLite binds, a
    file, a hash, the HTTP client) refuses. Iterative: the depth json.loads allowed."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not utf8_ok(value):
                return False
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


def _kind(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)
