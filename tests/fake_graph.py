"""A fake of Meta's Graph API (Cloud API) on loopback, for the tests' own use.

It checks what a real one checks (method, path, the bearer token, the body's shape) and answers
from a script: each POST to ``/<version>/<phone-number-id>/messages`` takes the next ``Answer``
(then success); the number's check (``GET /<version>/<phone-number-id>``) answers with
``number_answer``. Successful sends get ``wamid.<n>`` ids.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
from quart import request
from quart_trio import QuartTrio

from tests.helpers import serve_app

VERSION = "v24.0"
NUMBER_ID = "106540352242922"
TOKEN = "EAAtest-token-not-real-0123456789"


@attrs.frozen
class Answer:
    status: int = 200
    meta_code: int | None = None
    delay: float = 0.0  # seconds before answering
    headers: dict[str, str] = attrs.field(factory=dict)


class FakeGraph:
    def __init__(self, answers: list[Answer] | None = None) -> None:
        self.answers = list(answers or [])
        self.number_answer = Answer()
        self.token = TOKEN
        self.sends: list[dict[str, Any]] = []  # every POST body that passed the checks
        self.accepted: list[str] = []  # wamid ids of the sends answered 200
        self.checks = 0
        self.uploads: list[dict[str, Any]] = []
        self.problems: list[str] = []  # requests a real Graph API would refuse
        #: the number's throughput as Meta enforces it: more sends than this in any second
        #: answer 130429 (None: not enforced); ``level`` is what the number node says
        self.throughput: int | None = None
        self.level: str | None = None
        self.over_throughput = 0
        self._recent: list[float] = []
        self.app = QuartTrio("fake-graph")
        self.port = 0

        @self.app.get(f"/{VERSION}/<number_id>")
        async def number(number_id: str) -> Any:
            self.checks += 1
            problem = self._auth_problem(number_id)
            if problem:
                return problem
            node: dict[str, Any] = {"display_phone_number": "+1 555-010-0000", "id": NUMBER_ID}
            if self.level is not None:
                node["throughput"] = {"level": self.level}
            return await self._answer(self.number_answer, node)

        @self.app.post(f"/{VERSION}/<number_id>/media")
        async def media(number_id: str) -> Any:
            problem = self._auth_problem(number_id)
            if problem:
                return problem
            form = await request.form
            files = await request.files
            upload = files.get("file")
            if form.get("messaging_product") != "whatsapp" or upload is None:
                self.problems.append("a media upload without messaging_product or file")
                return _error_body(400, 100, "bad upload")
            data = upload.read()
            self.uploads.append(
                {"type": form.get("type"), "size": len(data), "name": upload.filename}
            )
            return {"id": f"media-{len(self.uploads)}"}, 200

        @self.app.post(f"/{VERSION}/<number_id>/messages")
        async def messages(number_id: str) -> Any:
            problem = self._auth_problem(number_id)
            if problem:
                return problem
            body = await request.get_json(force=True, silent=True)
            shape = _shape_problem(body)
            if shape:
                self.problems.append(shape)
                return _error_body(400, 100, shape)
            if self._over_throughput():
                self.over_throughput += 1
                return _error_body(400, 130429, "rate limit hit")
            self.sends.append(body)
            answer = self.answers.pop(0) if self.answers else Answer()
            wamid = f"wamid.{len(self.sends)}"
            ok = {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [{"id": wamid}],
            }
            result = await self._answer(answer, ok)
            if answer.status == 200:
                self.accepted.append(wamid)
            return result

        self._stats_route()

    def _stats_route(self) -> None:
        @self.app.get("/_stats")
        async def stats() -> Any:  # what a test in another process reads back
            return {"over_throughput": self.over_throughput, "accepted": len(self.accepted)}

    def _over_throughput(self) -> bool:
        """Meta's rule: at most ``throughput`` messages in any one-second window."""
        if self.throughput is None:
            return False
        now = trio.current_time()
        self._recent = [t for t in self._recent if now - t < 1.0]
        if len(self._recent) >= self.throughput:
            return True
        self._recent.append(now)
        return False

    def _auth_problem(self, number_id: str) -> Any:
        if number_id != NUMBER_ID:
            self.problems.append(f"unknown number id {number_id}")
            return _error_body(400, 100, "unknown phone number id")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.problems.append("bad token")
            return _error_body(401, 190, "Error validating access token")
        return None

    async def _answer(self, answer: Answer, ok: dict[str, Any]) -> Any:
        if answer.delay:
            await trio.sleep(answer.delay)
        if answer.status == 200:
            return ok, 200, answer.headers
        code = answer.meta_code if answer.meta_code is not None else 131000
        body, status = _error_body(answer.status, code, "scripted")
        return body, status, answer.headers

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{VERSION}"

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_app, self.app)
            task_status.started()


async def _serve_alone(throughput: int, level: str, port_file: str) -> None:
    graph = FakeGraph()
    graph.throughput, graph.level = throughput, level
    async with trio.open_nursery() as nursery:
        await nursery.start(graph.serve)
        with open(port_file, "w") as out:
            out.write(str(graph.port))


def main(argv: list[str]) -> None:
    """``python -m tests.fake_graph THROUGHPUT LEVEL PORT_FILE``: the fake in a process of its
    own, so that the times it counts sends at are not those of a busy test process (a test's
    trio loop stalled under coverage hands it a bunch at once that left it spread out)."""
    trio.run(_serve_alone, int(argv[0]), argv[1], argv[2])


def _error_body(status: int, code: int, details: str) -> tuple[dict[str, Any], int]:
    return (
        {
            "error": {
                "message": f"(#{code}) {details}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details},
                "fbtrace_id": "AbCdEf",
            }
        },
        status,
    )


def _shape_problem(body: Any) -> str | None:
    """What Meta's validation would refuse in a send body (the parts we rely on)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be whatsapp"
    to = body.get("to")
    if not isinstance(to, str) or not to.isdigit():
        return "to must be the number's digits"
    kind = body.get("type")
    if kind == "text":
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str):
            return "text.body is required"
    elif kind in {"image", "video", "audio", "document", "sticker"}:
        media = body.get(kind)
        if not isinstance(media, dict) or not isinstance(media.get("id"), str):
            return f"{kind}.id is required (we upload first)"
    elif kind == "template":
        template = body.get("template")
        if not isinstance(template, dict) or not isinstance(template.get("name"), str):
            return "template.name is required"
        if not isinstance(template.get("language"), dict):
            return "template.language.code is required"
    else:
        return f"unsupported type {kind!r}"
    return None


def dump(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
