"""The study's web app (Starlette, served by uvicorn): a participant page, its JSON API, images by id, an admin page.

Routes (every one needs a token; only hashes of tokens are stored):
- `GET  /p/{token}`                 the participant's page (instruction, reference photos, prompt, candidates);
- `GET  /api/next?t=TOKEN`          the participant's open trial (the same one until they vote) or `done`;
- `POST /api/vote`                  `{"token", "trial", "candidate"}`; recorded once (409 on a replay);
- `GET  /img/{id}?t=TOKEN`          an image of the study, looked up by its integer id in the study's own list
                                    and checked against its recorded SHA-256 (409 when it changed);
- `GET  /admin/{token}`, `GET /api/admin?t=TOKEN`   progress per participant and votes per method.
No part of a request is ever used as a file path.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.study import db
from bench.study.page import PARTICIPANT_PAGE


def create_app(db_path: Path) -> Any:
    """The ASGI app for the study database at `db_path` (opened per request: cheap, and safe across threads)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    db_path = Path(db_path)
    db.open_study(db_path).close()  # refuse a missing or foreign file before serving

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        def work() -> Any:
            conn = db.connect(db_path)
            try:
                return fn(conn, *args)
            finally:
                conn.close()

        return await run_in_threadpool(work)

    def refused(err: db.Refused) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    async def index(request: Request) -> Response:
        return PlainTextResponse("Preference study. Open the personal link you were given.")

    async def page(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            await call(db.participant, token)
        except db.Refused as err:
            return HTMLResponse(f"<!DOCTYPE html><title>Study</title><p>{html.escape(err.message)}</p>",
                                status_code=err.status)
        return HTMLResponse(PARTICIPANT_PAGE, headers={"Cache-Control": "no-store"})

    def _next(conn: Any, token: str | None) -> dict[str, Any]:
        person = db.participant(conn, token)
        trial = db.next_trial(conn, person["id"])
        cfg = db.study_config(conn)
        return {"participant": person["label"], "instruction": cfg.instruction,
                "progress": db.progress(conn, person["id"]), "done": trial is None, **(trial or {})}

    async def next_trial(request: Request) -> Response:
        try:
            return JSONResponse(await call(_next, request.query_params.get("t")))
        except db.Refused as err:
            return refused(err)

    def _vote(conn: Any, body: dict[str, Any]) -> dict[str, Any]:
        person = db.participant(conn, body.get("token"))
        vote_id = db.vote(conn, person["id"], body.get("trial"), body.get("candidate"))
        return {"recorded": vote_id, "progress": db.progress(conn, person["id"])}

    async def vote(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the request body must be a JSON object"}, status_code=400)
        try:
            return JSONResponse(await call(_vote, body))
        except db.Refused as err:
            return refused(err)

    def _image(conn: Any, image_id: int, token: str | None) -> tuple[bytes, str]:
        try:
            db.check_admin(conn, token)
        except db.Refused:
            db.participant(conn, token)
        row = db.image_row(conn, image_id)
        if row is None:
            raise db.Refused(404, f"no image {image_id} in this study")
        try:
            data = Path(row["path"]).read_bytes()
        except OSError:
            raise db.Refused(410, f"image {image_id} is missing from the results folder") from None
        if db.hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise db.Refused(409, f"image {image_id} changed since the study was created; it is not shown")
        return data, row["media_type"]

    async def image(request: Request) -> Response:
        try:
            data, media = await call(_image, request.path_params["image_id"], request.query_params.get("t"))
        except db.Refused as err:
            return PlainTextResponse(err.message, status_code=err.status)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    def _admin(conn: Any, token: str | None) -> dict[str, Any]:
        db.check_admin(conn, token)
        return db.admin_summary(conn)

    async def admin_api(request: Request) -> Response:
        try:
            return JSONResponse(await call(_admin, request.query_params.get("t")))
        except db.Refused as err:
            return refused(err)

    async def admin_page(request: Request) -> Response:
        try:
            summary = await call(_admin, request.path_params["token"])
        except db.Refused as err:
            return HTMLResponse(f"<!DOCTYPE html><title>Study</title><p>{html.escape(err.message)}</p>",
                                status_code=err.status)
        return HTMLResponse(admin_html(summary), headers={"Cache-Control": "no-store"})

    routes = [Route("/", index), Route("/p/{token}", page), Route("/api/next", next_trial),
              Route("/api/vote", vote, methods=["POST"]), Route("/img/{image_id:int}", image),
              Route("/admin/{token}", admin_page), Route("/api/admin", admin_api)]
    return Starlette(routes=routes)


def admin_html(summary: dict[str, Any]) -> str:
    """The admin page: votes per method, then progress per participant."""
    total = max(1, summary["votes"])
    methods = "".join(f"<tr><td>{html.escape(m['method'])}</td><td>{html.escape(m['variant'])}</td>"
                      f"<td class='votes'>{m['votes']}</td><td>{100 * m['votes'] / total:.1f}%</td></tr>"
                      for m in summary["methods"])
    people = "".join(f"<tr><td>{html.escape(p['participant'])}</td><td class='done'>{p['done']}</td>"
                     f"<td>{p['total']}</td></tr>" for p in summary["participants"])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Study admin</title>"
            f"<meta http-equiv='refresh' content='15'><style>body{{font-family:system-ui,sans-serif;margin:2em}}"
            f"td,th{{border:1px solid #ccc;padding:3px 8px}}table{{border-collapse:collapse;margin-bottom:1.5em}}"
            f"</style></head><body><h1>Study {html.escape(summary['name'])}</h1>"
            f"<p id='summary'>{summary['votes']} votes on {summary['trials']} trials from "
            f"{len(summary['participants'])} participants.</p>"
            f"<h2>Votes per method</h2><table id='methods'><tr><th>method</th><th>variant</th><th>votes</th>"
            f"<th>share</th></tr>{methods}</table>"
            f"<h2>Progress per participant</h2><table id='participants'><tr><th>participant</th><th>done</th>"
            f"<th>reachable</th></tr>{people}</table></body></html>")


def serve(db_path: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the study with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(db_path), host=host, port=port, log_level="warning")
