"""The registry's HTTP API: the original's routes and JSON, answered as application/json.

Handlers only translate between HTTP and the store; every failure becomes a JSON body with a status and,
where we add one, an ``error`` message the caller can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from boshreg.registry.access_log import AccessLogMiddleware
from boshreg.registry.auth import REALM, BasicAuth, Caller
from boshreg.registry.config import RegistryConfig
from boshreg.registry.payload import PayloadError, check_instance_id, check_settings
from boshreg.registry.store import SettingsRejected, SettingsStore, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

OK = {"status": "ok"}


class BodyTooLarge(Exception):
    """The request body is over http.max_body_bytes."""


def error(status_code: int, status: str, message: str | None = None, **headers: str) -> JSONResponse:
    """A JSON error in the original's shape, with our ``error`` message beside ``status``."""
    body: dict[str, Any] = {"status": status}
    if message:
        body["error"] = message
    return JSONResponse(body, status_code=status_code, headers=headers or None)


def access_denied(message: str) -> JSONResponse:
    """401 with the original's realm, so clients retry with credentials."""
    return error(401, "access_denied", message, **{"WWW-Authenticate": REALM})


class RegistryApi:
    """The route handlers, bound to one config and one store."""

    def __init__(self, config: RegistryConfig, store: SettingsStore) -> None:
        self.config = config
        self.store = store
        self.auth = BasicAuth(config.users())
        self.anonymous_reads = config.http.allow_anonymous_reads
        self.max_body = config.http.max_body_bytes
        self.timeout = config.http.request_timeout
        self.limiter = anyio.CapacityLimiter(config.db.max_connections)

    async def settings(self, request: Request) -> Response:
        """GET, PUT and DELETE of /instances/<id>/settings."""
        caller = self.auth.identify(request.headers.get("authorization"))
        if caller is Caller.REFUSED:
            return access_denied("credentials not accepted; check the user and password in the endpoint")
        if caller is Caller.ANONYMOUS and not (request.method in ("GET", "HEAD") and self.anonymous_reads):
            return access_denied(self._anonymous_refusal(request.method))
        try:
            instance_id = check_instance_id(request.path_params["instance_id"])
            if request.method == "PUT":
                settings = check_settings(await self._read_body(request))
                await self._run(self.store.put, instance_id, settings)
                return JSONResponse(OK)
            if request.method == "DELETE":
                await self._run(self.store.delete, instance_id)
                return JSONResponse(OK)
            stored = await self._run(self.store.get, instance_id)
        except PayloadError as exc:
            return error(400, "error", str(exc))
        except BodyTooLarge:
            return error(413, "error", f"body is larger than http.max_body_bytes ({self.max_body} bytes)")
        except SettingsRejected as exc:
            return error(413 if exc.too_large else 400, "error", str(exc))
        except StoreUnavailable as exc:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            return error(503, "error", str(exc), **{"Retry-After": "1"})
        if stored is None:
            return error(404, "not_found", f"no settings stored for instance {instance_id}")
        return JSONResponse({"status": "ok", "settings": stored})

    async def healthz(self, _request: Request) -> Response:
        """The process is up and answering."""
        return JSONResponse(OK)

    async def readyz(self, _request: Request) -> Response:
        """The database answers; a load balancer should send traffic here only then."""
        try:
            await self._run(self.store.ping)
        except StoreUnavailable as exc:
            return error(503, "error", str(exc))
        return JSONResponse(OK)

    def _anonymous_refusal(self, method: str) -> str:
        if method in ("GET", "HEAD"):
            if self.config.cloud is not None:
                return (
                    "credentials required: the IaaS address check for unauthenticated reads is not "
                    "available in this version; put user:password in the agent's registry endpoint"
                )
            return (
                "credentials required; put user:password in the registry endpoint "
                "(or set http.allow_anonymous_reads: true)"
            )
        return "credentials required to change settings"

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in a worker thread, bounded by http.request_timeout."""
        try:
            with anyio.fail_after(self.timeout):
                return await anyio.to_thread.run_sync(func, *args, abandon_on_cancel=True, limiter=self.limiter)
        except TimeoutError:
            raise StoreUnavailable(
                f"the database did not answer within http.request_timeout ({self.timeout:g} s)"
            ) from None


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, "not_found", "no such route; the API is /instances/<id>/settings")
    if exc.status_code == 405:
        return error(405, "error", "method not allowed here; use GET, PUT or DELETE", Allow="GET, HEAD, PUT, DELETE")
    return error(exc.status_code, "error", str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return error(500, "error", "internal error; the registry log has the details")


def create_app(config: RegistryConfig, store: SettingsStore) -> Callable[..., Awaitable[None]]:
    """The ASGI application: routes, JSON error handlers and the access log."""
    api = RegistryApi(config, store)
    routes = [
        Route("/instances/{instance_id}/settings", api.settings, methods=["GET", "PUT", "DELETE"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return AccessLogMiddleware(app)
