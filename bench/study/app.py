"""The study's web app (Starlette, served by uvicorn): a participant page, its JSON API, images by id, an admin page.

Routes (every one but the static files needs a token; only hashes of tokens are stored):
- `GET  /p/{token}`                 the participant's page (instruction, reference photos, prompt, candidates);
- `GET  /static/study.js|study.css` the page's script and style sheet (fixed names, read from the package);
- `GET  /api/next?t=TOKEN`          the participant's open trial (the same one until they vote) or `done`;
- `POST /api/vote`                  `{"token", "trial", "candidate"}` (ids are JSON integers); recorded once, and
                                    only when every candidate image of the trial was delivered to that participant;
- `GET  /img/{id}?t=TOKEN`          an image of the study, looked up by its integer id in the study's own list
                                    and checked against its recorded SHA-256 (409 when it changed, 410 when gone);
                                    sending a candidate of a participant's trial is recorded as its delivery;
- `GET  /admin/{token}`, `GET /api/admin?t=TOKEN`   progress per participant and votes per method.
No part of a request is ever used as a file path. Every answer carries the security headers (`SECURITY_HEADERS`);
a request body over `BODY_LIMIT` bytes is refused with 413 before it is read (by its declared length, or while
streaming a chunked one), every malformed value is a 400 with one line, and a database still locked after 30 s
is a 503.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.study import db, trials
from bench.study.page import PARTICIPANT_PAGE, static_files

BODY_LIMIT = 4096
"""Largest request body read, in bytes (a vote is under 200)."""
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""Sent with every answer: no inline or foreign script, style, image or connection; never framed; no referrer."""
IMAGE_ID = re.compile(r"[0-9]{1,15}")
VOTE_KEYS = ("token", "trial", "candidate")


class Guard:
    """ASGI middleware around the app: `SECURITY_HEADERS` on every answer (Starlette's own 404 and 405 included),
    and a request that declares a body over the limit refused with 413 before any of it is read."""

    def __init__(self, app: Any, limit: int = BODY_LIMIT) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        from starlette.datastructures import Headers, MutableHeaders
        from starlette.responses import JSONResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers[key] = value
            await send(message)

        declared = Headers(scope=scope).getlist("content-length")
        refusal = None
        if len(declared) > 1 or (declared and not re.fullmatch(r"[0-9]{1,18}", declared[0])):
            refusal = JSONResponse({"error": "the Content-Length header is not one number"}, status_code=400)
        elif declared and int(declared[0]) > self.limit:
            refusal = JSONResponse({"error": f"request body too large: at most {self.limit} bytes"}, status_code=413)
        if refusal is not None:
            refusal.headers["Connection"] = "close"  # the unread body is not drained
            await refusal(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


def parse_vote(raw: bytes) -> dict[str, Any]:
    """The vote in a request body: a JSON object with exactly `token`, `trial`, `candidate`; else a 400 line.
    `NaN`/`Infinity` are not JSON; an integer of more than 17 digits is read as out of range, never converted."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    def integer(text: str) -> int:
        return int(text) if len(text) <= 17 else trials.MAX_ID + 1

    try:
        body = json.loads(raw or b"{}", parse_constant=constant, parse_int=integer)
    except (ValueError, RecursionError):
        raise db.Refused(400, "the request body is not JSON (a vote is {'token', 'trial', 'candidate'})") from None
    if not isinstance(body, dict):
        raise db.Refused(400, "the request body must be a JSON object {'token', 'trial', 'candidate'}")
    extra = [k for k in body if k not in VOTE_KEYS]
    if extra:
        raise db.Refused(400, f"unexpected field {json.dumps(extra[0][:40])}; a vote has token, trial and candidate")
    return body


def create_app(db_path: Path) -> Any:
    """The ASGI app for the study database at `db_path` (opened per request: cheap, and safe across threads)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    db_path = Path(db_path)
    db.open_study(db_path).close()  # refuse a missing or foreign file (and bring an older schema up) before serving
    static = static_files()

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        def work() -> Any:
            conn = db.connect(db_path)
            try:
                return fn(conn, *args)
            except sqlite3.OperationalError:  # the write lock not granted within 30 s: a retry may work
                raise db.Refused(503, "the study database is busy; try again in a moment") from None
            finally:
                conn.close()

        return await run_in_threadpool(work)

    def refused(err: db.Refused) -> JSONResponse:
        return JSONResponse({"error": err.message, **({"reason": err.reason} if err.reason else {})},
                            status_code=err.status)

    def refused_page(err: db.Refused) -> HTMLResponse:
        return HTMLResponse(f"<!DOCTYPE html><title>Study</title><p>{html.escape(err.message)}</p>",
                            status_code=err.status)

    async def index(request: Request) -> Response:
        return PlainTextResponse("Preference study. Open the personal link you were given.")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:  # a fixed list of names, never a path
            return PlainTextResponse("not found", status_code=404)
        data, media = static[name]
        return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})

    async def page(request: Request) -> Response:
        try:
            await call(db.participant, request.path_params["token"])
        except db.Refused as err:
            return refused_page(err)
        return HTMLResponse(PARTICIPANT_PAGE, headers={"Cache-Control": "no-store"})

    def _next(conn: Any, token: str | None) -> dict[str, Any]:
        person = db.participant(conn, token)
        trial = trials.next_trial(conn, person["id"])
        cfg = db.study_config(conn)
        return {"participant": person["label"], "instruction": cfg.instruction,
                "progress": trials.progress(conn, person["id"]), "done": trial is None, **(trial or {})}

    async def next_trial(request: Request) -> Response:
        try:
            return JSONResponse(await call(_next, request.query_params.get("t")), headers={"Cache-Control": "no-store"})
        except db.Refused as err:
            return refused(err)

    def _vote(conn: Any, body: dict[str, Any]) -> dict[str, Any]:
        trials.check_id(body.get("trial"), "trial")  # a malformed id is a 400 whoever sends it
        trials.check_id(body.get("candidate"), "candidate")
        person = db.participant(conn, body.get("token"))
        vote_id = trials.vote(conn, person["id"], body.get("trial"), body.get("candidate"))
        return {"recorded": vote_id, "progress": trials.progress(conn, person["id"])}

    async def vote(request: Request) -> Response:
        raw = bytearray()
        try:
            async for chunk in request.stream():  # a chunked body has no declared length: cap it while reading
                raw += chunk
                if len(raw) > BODY_LIMIT:
                    return JSONResponse({"error": f"request body too large: at most {BODY_LIMIT} bytes"},
                                        status_code=413, headers={"Connection": "close"})
        except ClientDisconnect:
            return JSONResponse({"error": "the request body was cut off"}, status_code=400)
        try:
            return JSONResponse(await call(_vote, parse_vote(bytes(raw))))
        except db.Refused as err:
            return refused(err)

    def _image(conn: Any, image_id: int, token: str | None) -> tuple[bytes, str]:
        try:
            db.check_admin(conn, token)
            person = None
        except db.Refused:
            person = db.participant(conn, token)
        row = trials.image_row(conn, image_id)
        if row is None:
            raise db.Refused(404, f"no image {image_id} in this study")
        try:
            data = Path(row["path"]).read_bytes()
        except OSError:
            raise db.Refused(410, f"image {image_id} is missing from the results folder") from None
        if db.hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise db.Refused(409, f"image {image_id} changed since the study was created; it is not shown")
        if person is not None:
            trials.deliver(conn, person["id"], image_id)
        return data, row["media_type"]

    async def image(request: Request) -> Response:
        text = request.path_params["image_id"]
        if not IMAGE_ID.fullmatch(text):
            return PlainTextResponse(f"no image {text[:40]!r} in this study", status_code=404)
        try:
            data, media = await call(_image, int(text), request.query_params.get("t"))
        except db.Refused as err:
            return PlainTextResponse(err.message, status_code=err.status)
        return Response(data, media_type=media, headers={"Cache-Control": "no-store"})

    def _admin(conn: Any, token: str | None) -> dict[str, Any]:
        db.check_admin(conn, token)
        return trials.admin_summary(conn)

    async def admin_api(request: Request) -> Response:
        try:
            return JSONResponse(await call(_admin, request.query_params.get("t")))
        except db.Refused as err:
            return refused(err)

    async def admin_page(request: Request) -> Response:
        try:
            summary = await call(_admin, request.path_params["token"])
        except db.Refused as err:
            return refused_page(err)
        return HTMLResponse(admin_html(summary), headers={"Cache-Control": "no-store"})

    routes = [Route("/", index), Route("/p/{token}", page), Route("/api/next", next_trial),
              Route("/static/{name}", asset),
              Route("/api/vote", vote, methods=["POST"]), Route("/img/{image_id}", image),
              Route("/admin/{token}", admin_page), Route("/api/admin", admin_api)]
    return Guard(Starlette(routes=routes))


def admin_html(summary: dict[str, Any]) -> str:
    """The admin page: votes per method, then progress per participant."""
    total = max(1, summary["votes"])
    methods = "".join(f"<tr><td>{html.escape(m['method'])}</td><td>{html.escape(m['variant'])}</td>"
                      f"<td class='votes'>{m['votes']}</td><td>{100 * m['votes'] / total:.1f}%</td></tr>"
                      for m in summary["methods"])
    people = "".join(f"<tr{' class=revoked' if p['revoked'] else ''}><td>{html.escape(p['participant'])}"
                     f"{' (revoked)' if p['revoked'] else ''}</td><td class='done'>{p['done']}</td>"
                     f"<td>{p['total']}</td></tr>" for p in summary["participants"])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Study admin</title>"
            f"<meta http-equiv='refresh' content='15'><link rel='stylesheet' href='/static/study.css'></head>"
            f"<body class='admin'><h1>Study {html.escape(summary['name'])}</h1>"
            f"<p id='summary'>{summary['votes']} votes on {summary['trials']} trials from "
            f"{len(summary['participants'])} participants.</p>"
            f"<h2>Votes per method</h2><table id='methods'><tr><th>method</th><th>variant</th><th>votes</th>"
            f"<th>share</th></tr>{methods}</table>"
            f"<h2>Progress per participant</h2><table id='participants'><tr><th>participant</th><th>done</th>"
            f"<th>reachable</th></tr>{people}</table></body></html>")


def serve(db_path: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the study with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(db_path), host=host, port=port, log_level="warning", server_header=False)
