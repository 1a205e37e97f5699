"""The HTTP API: `POST /v1/jobs` (raw JSONL body), `GET /v1/jobs/{id}`, `GET /v1/usage`; bearer tokens first.

The token and role are checked by a dependency, before the handler reads a byte of the body; the body is then
streamed with a size limit (413), so an unauthenticated or oversized upload is never held in memory.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' Annotated[..., Depends(...)] at definition.

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .jobs import JobError, JobRunner
from .quotas import QuotaExceeded
from .users import User, authenticate, load_users

__all__ = ["create_app"]

_bearer = HTTPBearer(auto_error=False, description="a token from `actcache user add`")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def create_app(runner: JobRunner, users_path: str | Path, max_body_bytes: int) -> FastAPI:
    """The service's ASGI app; users are re-read per request, so `actcache user add` needs no restart."""
    app = FastAPI(title="actcache", summary="an activation-cache service: submit corpora to a resident model")

    @app.exception_handler(QuotaExceeded)
    def over_quota(request: Request, error: QuotaExceeded) -> JSONResponse:
        return JSONResponse(error.body, 429, headers={"Retry-After": str(error.retry_after_s)})

    def require(role: str | None) -> Any:
        def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> User:
            if credentials is None:
                raise _unauthorized("no bearer token: send `Authorization: Bearer TOKEN`")
            user = authenticate(load_users(users_path), credentials.credentials)
            if user is None:
                raise _unauthorized("unknown token: ask the operator for one (`actcache user add`)")
            if role is not None and role not in user.roles:
                raise HTTPException(403, f"user {user.name!r} lacks the {role!r} role")
            return user
        return check

    @app.post("/v1/jobs", status_code=201, summary="submit a corpus (raw JSONL, application/x-ndjson)",
              responses={429: {"description": "over a quota: `Retry-After` and the body's `resets_at` say when "
                                              "it resets"}})
    async def submit(request: Request, name: Annotated[str, Query(min_length=1, max_length=200)],
                     user: Annotated[User, Depends(require("submit"))]) -> dict[str, Any]:
        too_big = HTTPException(413, f"the body is over the service's limit of {max_body_bytes} bytes: split it")
        if int(request.headers.get("content-length") or 0) > max_body_bytes:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise too_big
        try:
            return await run_in_threadpool(runner.submit, name, user, bytes(body))
        except (JobError, UnicodeDecodeError) as err:
            raise HTTPException(400, str(err)) from None

    @app.get("/v1/jobs/{job_id}", summary="a job's state, progress and, once done, its cache")
    def job(job_id: str, user: Annotated[User, Depends(require("read"))]) -> dict[str, Any]:
        record = runner.get(job_id)
        if record is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return record

    @app.get("/v1/usage", summary="the caller's tokens computed today (UTC), jobs running, and quotas")
    def usage(user: Annotated[User, Depends(require(None))]) -> dict[str, Any]:
        return runner.usage(user)

    return app
