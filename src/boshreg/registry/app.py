"""The registry's HTTP API: the original's routes and JSON, answered as application/json.

Handlers only translate between HTTP and the store; every failure becomes a JSON body with a status and,
where we add one, an ``error`` message the caller can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import anyio.to_thread
import orjson
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from boshreg.bootstrap.credentials import credential_problem, instance_token
from boshreg.bootstrap.registry_key import REGISTRY_KEY
from boshreg.registry.access import Decision, decide
from boshreg.registry.audit import EVENTS_DEFAULT, EVENTS_MAX, AuditLog, Event, query_events
from boshreg.registry.auth import REALM, Authenticator, Caller, Identity, parse_basic
from boshreg.registry.cache import (
    FOREIGN_EXPIRY_SECONDS,
    Answer,
    ChangeCounter,
    PgNotifications,
    ResponseCache,
    SharedMarker,
)
from boshreg.registry.config import RegistryConfig
from boshreg.registry.dashboard import REFRESH_SECONDS, SORTS, STATIC, TEMPLATES, fleet_page, instance_page
from boshreg.registry.fleet import AGENT_WAIT_SECONDS, MAX_AGENT_WAIT, State, query_fleet, stored_and_never_read
from boshreg.registry.front import FastAnswer
from boshreg.registry.iaas import (
    IaasUnavailable,
    InstanceAmbiguous,
    InstanceUnknown,
    address_lookup,
    mismatch_message,
)
from boshreg.registry.metrics import CONTENT_TYPE, DatabaseGauges, ProcessMetrics, render, snapshots
from boshreg.registry.openapi import OPENAPI
from boshreg.registry.payload import PayloadError, check_instance_id, check_settings
from boshreg.registry.peer import client_address
from boshreg.registry.store import SettingsRejected, SettingsStore, Stored, StoreUnavailable, pool_size
from boshreg.registry.throttle import AuthThrottle

log = logging.getLogger(__name__)

T = TypeVar("T")

OK = {"status": "ok"}
# The dashboard's pages: nothing from elsewhere, no scripts, no framing by other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
COLUMNS = [("instance", "Instance"), ("state", "State"), ("stored", "Stored"), ("read", "Last read"),
           ("", "From"), ("", "Credential"), ("reads", "Reads"), ("refusals", "Refused"), ("", "Cause")]  # fmt: skip
ANONYMOUS = Identity(Caller.ANONYMOUS)
CLOUD_LOOKUPS = 4  # cloud API calls in flight at once, per worker process
HASH_CHECKS = 2  # bcrypt checks at once, per worker process
ADDRESS_REFUSED = "Instance IP mismatch: the caller's address is not one the cloud gives this instance"


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


_ACTIONS = {"GET": "read", "HEAD": "read", "PUT": "write", "DELETE": "delete"}
_CREDENTIAL_ACTIONS = {"POST": "credentials", "DELETE": "revoke"}
_OUTCOMES = {200: "ok", 400: "bad_request", 401: "access_denied", 403: "forbidden", 404: "not_found",
             413: "too_large", 429: "throttled", 500: "ip_mismatch", 503: "unavailable"}  # fmt: skip


def forbidden(message: str) -> JSONResponse:
    """403: the credentials are good, but not for this."""
    return error(403, "access_denied", message)


class RegistryApi:
    """The route handlers, bound to one config, one store and one audit trail."""

    def __init__(
        self,
        config: RegistryConfig,
        store: SettingsStore,
        audit: AuditLog | None = None,
        metrics: ProcessMetrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.metrics = metrics or ProcessMetrics(None)
        if audit is not None:
            self.metrics.gauges = lambda: {"audit_queue": audit.queue_depth, "audit_dropped": audit.dropped_total}
        self.scrapers = [ipaddress.ip_network(entry, strict=False) for entry in config.http.metrics_allow_from]
        self.auth = Authenticator(config.users(), config.http.instance_secret)
        throttle = config.http.auth_throttle
        self.throttle = AuthThrottle(throttle.max_failures, throttle.window, throttle.block)
        self.anonymous_reads = config.http.allow_anonymous_reads
        self.max_body = config.http.max_body_bytes
        self.timeout = config.http.request_timeout
        # As many worker threads as the thread engine has connections (on PostgreSQL, a share of
        # db.max_connections): more would only wait inside the pool and time out there.
        self.limiter = anyio.CapacityLimiter(pool_size(store.engine))
        self.addresses = address_lookup(config.cloud, self.timeout, self.metrics.lookup) if config.cloud else None
        # Cloud lookups wait on their own few threads: a hung cloud cannot take the store's.
        self.cloud_limiter = anyio.CapacityLimiter(CLOUD_LOOKUPS)
        # bcrypt checks wait on their own threads: guesses cannot delay reads or the address check.
        self.hash_limiter = anyio.CapacityLimiter(HASH_CHECKS)
        self.cache = answer_cache(config, store)

    def fast_read(self, raw_id: str, header: str | None, client: str) -> tuple[bytes, str] | None:
        """The answer to a settings read without the ASGI app, or None when it needs the full path.

        A lookup first: the cached answer, the identity this header proved before, the throttle, the
        access policy. On SQLite a miss is read here too, in line (a read by key takes microseconds and
        never waits for a writer), and a header not seen before is checked here when that needs no bcrypt.
        Whatever else (a refused or bcrypt header, an address check, an instance not stored, a database
        error, another backend's miss) goes the full way through ``settings``, which also says why. The
        answer comes with the kind of credential that read it (for the metrics).
        """
        cache = self.cache
        answer = cache.get(raw_id) if cache is not None else None
        if answer is None and not self.store.reads_inline:
            return None
        identity = self._allowed_reader(raw_id, header, client)
        if identity is None:
            return None
        if answer is None:
            answer = self._read_inline(raw_id)
        return self._served(raw_id, client, identity, answer)

    async def fast_read_async(self, raw_id: str, header: str | None, client: str) -> FastAnswer | None:
        """``fast_read`` for a miss on a store read by ``get_async`` (PostgreSQL, MySQL): the same rules, the read
        awaited, no ASGI app (Starlette's share of a miss). A database that does not answer is
        answered here (503, in the trail), not read a second time by the full path after a second timeout.
        """
        if not self.store.reads_async:
            return None
        identity = self._allowed_reader(raw_id, header, client)
        if identity is None or REGISTRY_KEY.fullmatch(raw_id) is None:
            return None
        version, read_at = self._before_read()
        try:
            stored = await self._timed("read", self._bounded(self.store.get_async(raw_id)))
        except StoreUnavailable as exc:
            log.warning("GET /instances/%s/settings: %s", raw_id, exc)
            if self.audit is not None:
                self.audit.record("read", raw_id, client, identity.caller.value, 503, _OUTCOMES[503])
            refusal = error(503, "error", str(exc), **{"Retry-After": "1"})
            return 503, refusal.raw_headers, bytes(refusal.body), identity.caller.value
        served = self._served(raw_id, client, identity, self._kept(raw_id, stored, version, read_at))
        return (200, [(b"content-type", b"application/json")], *served) if served is not None else None

    def _allowed_reader(self, raw_id: str, header: str | None, client: str) -> Identity | None:
        """Who reads, when that is cheap to know and the policy lets them read ``raw_id``; else None."""
        identity = self._quick_identity(header)
        if identity is None or self.throttle.retry_after(client, identity.user or "") is not None:
            return None
        access = decide(
            identity.caller,
            identity.user,
            "read",
            raw_id,
            anonymous_reads=self.anonymous_reads,
            address_check=self.addresses is not None,
        )
        return identity if access.decision is Decision.ALLOW else None

    def _served(self, raw_id: str, client: str, identity: Identity, answer: Answer | None) -> tuple[bytes, str] | None:
        """The answer for this reader, counted in the trail; None when the full path must say why not."""
        if answer is None:
            return None
        if identity.caller is Caller.INSTANCE and identity.generation != answer.generation:
            return None  # a revoked credential: the full path says so
        kind = identity.caller.value
        if self.audit is not None:
            self.audit.record_read(raw_id, client, kind)
        return answer.body, kind

    def _quick_identity(self, header: str | None) -> Identity | None:
        """Who sends this header, when that is cheap to know and not a refusal; else None (the full path)."""
        if header is None:
            return ANONYMOUS
        identity = self.auth.known(header)
        if identity is not None:
            return identity
        presented = parse_basic(header)
        if presented is None or self.auth.needs_hash_check_of(presented):
            return None
        identity = self.auth.identify_of(True, presented)
        if identity.caller is Caller.REFUSED:
            return None  # counted, throttled and answered by the full path
        self.auth.remember(header, identity)
        return identity

    def _read_inline(self, raw_id: str) -> Answer | None:
        """A stored instance's answer read on the loop (SQLite) and kept in the cache; None for anything else."""
        if REGISTRY_KEY.fullmatch(raw_id) is None:
            return None
        version, read_at = self._before_read()
        started = time.perf_counter()
        try:
            stored = self.store.get_inline(raw_id)
        except StoreUnavailable:
            return None  # the full path reads again and answers 503 with the cause
        self.metrics.store_call("read", time.perf_counter() - started, failed=False)
        return self._kept(raw_id, stored, version, read_at)

    def _before_read(self) -> tuple[tuple[int, int], float]:
        """The cache's version and the time, taken before a read: an answer read across a write is not kept."""
        return (self.cache.version() if self.cache is not None else (0, 0)), time.monotonic()

    def _kept(self, raw_id: str, stored: Stored, version: tuple[int, int], read_at: float) -> Answer | None:
        """The answer to a read of stored settings, kept in the cache; None when nothing is stored."""
        if stored.settings is None:
            return None
        answer = Answer(settings_answer(stored.settings), stored.generation)
        if self.cache is not None:
            self.cache.put(raw_id, answer, version, read_at, stored.settings)
        return answer

    def close(self) -> None:
        """Let go of the cache's shared files."""
        if self.cache is not None:
            self.cache.close()

    async def settings(self, request: Request) -> Response:
        """GET, PUT and DELETE of /instances/<id>/settings."""
        raw_id = request.path_params["instance_id"]
        identity, refusal = await self._authorize(request, raw_id, _ACTIONS[request.method])
        response = refusal or await self._settings(request, raw_id, identity)
        self._record(request, raw_id, identity, response)
        return response

    async def credentials(self, request: Request) -> Response:
        """POST /instances/<id>/credentials: a VM's read credential, for the CPI side; DELETE revokes it
        (admin only)."""
        raw_id = request.path_params["instance_id"]
        action = _CREDENTIAL_ACTIONS[request.method]
        identity, refusal = await self._authorize(request, raw_id, action)
        response = refusal or await self._credentials(raw_id, revoke=request.method == "DELETE")
        self._record(request, raw_id, identity, response, action=action)
        return response

    async def events(self, request: Request) -> Response:
        """GET /instances/<id>/events: the instance's audit trail, newest first (admin only; ``boshreg why``)."""
        raw_id = request.path_params["instance_id"]
        identity, refusal = await self._authorize(request, raw_id, "events")
        response = refusal or await self._events(request, raw_id)
        self._record(request, raw_id, identity, response, action="events")
        return response

    async def fleet(self, request: Request) -> Response:
        """GET /fleet: every stored instance and its state (admin only; ``boshreg fleet``, the dashboard)."""
        _identity, refusal = await self._authorize(request, "", "fleet")
        if refusal is not None:
            return refusal
        wait_text = request.query_params.get("agent_wait", str(AGENT_WAIT_SECONDS))
        try:
            agent_wait = float(wait_text)
        except ValueError:
            agent_wait = -1.0
        if not 0 < agent_wait <= MAX_AGENT_WAIT:
            return error(400, "error", f"agent_wait must be a number of seconds above 0, at most {MAX_AGENT_WAIT}")
        now = datetime.now(UTC)
        try:
            entries = await self._run(lambda: query_fleet(self.store.engine, now=now, agent_wait=agent_wait))
        except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
            log.warning("fleet: %s", type(exc).__name__)
            return error(503, "error", "the fleet table cannot be read now", **{"Retry-After": "1"})
        return JSONResponse(
            {
                "status": "ok",
                "now": now.isoformat(),
                "agent_wait": agent_wait,
                "instances": [entry.to_json() for entry in entries],
            }
        )

    async def prometheus(self, request: Request) -> Response:
        """GET /metrics: Prometheus' text format, every worker's counts (admin, or http.metrics_allow_from)."""
        _identity, refusal = await self._authorize(request, "", "metrics")
        if refusal is not None:
            return refusal
        started = time.perf_counter()
        try:  # bounded by http.request_timeout, as every database call: a hung database is a 0, not a hung scrape
            database = await self._run(self._database_gauges)
        except StoreUnavailable:
            database = DatabaseGauges(False, time.perf_counter() - started, None, {})
        body = render(snapshots(self.metrics.directory, self.metrics), database)
        return Response(body, media_type=CONTENT_TYPE)

    def _database_gauges(self) -> DatabaseGauges:
        """The database's availability and the fleet's counts, for a scrape (a worker thread)."""
        started = time.perf_counter()
        try:
            instances, never_read = stored_and_never_read(self.store.engine, datetime.now(UTC))
        except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            return DatabaseGauges(False, time.perf_counter() - started, None, {})
        return DatabaseGauges(True, time.perf_counter() - started, instances, never_read)

    async def ui_fleet(self, request: Request) -> Response:
        """GET /ui/: the dashboard's fleet page (admin only)."""
        _identity, refusal = await self._authorize(request, "", "fleet")
        if refusal is not None:
            return refusal
        params = request.query_params
        state = params.get("state", "")
        state = state if state in {s.value for s in State} else ""
        search = params.get("q", "")[:255]
        sort = params.get("sort", "state")
        sort = sort if sort in SORTS else "state"
        descending = params.get("order") == "desc"
        now = datetime.now(UTC)
        agent_wait = self._agent_wait(request)
        try:
            page = await self._run(
                lambda: fleet_page(
                    self.store.engine, state=state, search=search, sort=sort, descending=descending,
                    agent_wait=agent_wait, now=now,
                )
            )  # fmt: skip
        except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
            log.warning("dashboard: %s", type(exc).__name__)
            return error(503, "error", "the fleet table cannot be read now", **{"Retry-After": "1"})

        asked_wait = request.query_params.get("agent_wait", "")  # kept by the form and the sort links

        def sort_query(key: str) -> str:
            order = "desc" if key == sort and not descending else "asc"
            kept = {"agent_wait": asked_wait} if asked_wait else {}
            return urlencode({"state": state, "q": search, "sort": key, "order": order, **kept})

        context = {"page": page, "state": state, "search": search, "sort": sort, "descending": descending,
                   "columns": COLUMNS, "sort_query": sort_query, "agent_wait": asked_wait}  # fmt: skip
        return self._page(request, "fleet.html", now, context)

    async def ui_instance(self, request: Request) -> Response:
        """GET /ui/instances/<id>: one instance's facts, diagnosis and recent events (admin only)."""
        raw_id = request.path_params["instance_id"]
        _identity, refusal = await self._authorize(request, "", "fleet")
        if refusal is not None:
            return refusal
        now = datetime.now(UTC)
        agent_wait = self._agent_wait(request)
        try:
            instance_id = check_instance_id(raw_id)
            page = await self._run(
                lambda: instance_page(self.store.engine, instance_id, agent_wait=agent_wait, now=now)
            )
        except PayloadError as exc:
            return error(400, "error", str(exc))
        except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
            log.warning("dashboard: %s", type(exc).__name__)
            return error(503, "error", "the audit trail cannot be read now", **{"Retry-After": "1"})
        return self._page(request, "instance.html", now, {"page": page})

    def _agent_wait(self, request: Request) -> float:
        """?agent_wait=SECONDS, as /fleet takes it; the director's 600 s when absent or out of range."""
        try:
            wait = float(request.query_params.get("agent_wait", str(AGENT_WAIT_SECONDS)))
        except ValueError:
            return AGENT_WAIT_SECONDS
        return wait if 0 < wait <= MAX_AGENT_WAIT else AGENT_WAIT_SECONDS

    def _refresh(self, request: Request) -> int:
        """Seconds between the page's own refreshes: ?refresh=N (2 to 3600), else REFRESH_SECONDS."""
        text = request.query_params.get("refresh", "")
        return int(text) if text.isdigit() and 2 <= int(text) <= 3600 else REFRESH_SECONDS

    def _page(self, request: Request, template: str, now: datetime, context: dict[str, Any]) -> Response:
        response = TEMPLATES.TemplateResponse(
            request,
            template,
            {"now": now, "root": request.scope.get("root_path", ""), "refresh": self._refresh(request), **context},
        )
        response.headers.update(PAGE_HEADERS)
        return response

    async def _events(self, request: Request, raw_id: str) -> Response:
        limit_text = request.query_params.get("limit", str(EVENTS_DEFAULT))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= EVENTS_MAX:
            return error(400, "error", f"limit must be a whole number from 1 to {EVENTS_MAX}")
        try:
            instance_id = check_instance_id(raw_id)
            stored, found = await self._run(lambda: self._stored_and_events(instance_id, int(limit_text)))
        except PayloadError as exc:
            return error(400, "error", str(exc))
        except (StoreUnavailable, sa_exc.SQLAlchemyError) as exc:
            log.warning("events of %s: %s", raw_id[:64], type(exc).__name__)
            return error(503, "error", "the audit trail cannot be read now", **{"Retry-After": "1"})
        return JSONResponse({"status": "ok", "stored": stored, "events": [event.to_json() for event in found]})

    def _stored_and_events(self, instance_id: str, limit: int) -> tuple[bool, list[Event]]:
        """Whether settings are stored, and the trail: ``why`` asks for both here, since reading the settings
        would put a read of its own into the trail it diagnoses (an operator's read taken for the VM's)."""
        stored = self.store.get(instance_id) is not None
        return stored, query_events(self.store.engine, instance_id=instance_id, limit=limit)

    async def _settings(self, request: Request, raw_id: str, identity: Identity) -> Response:
        try:
            instance_id = check_instance_id(raw_id)
            if request.method == "PUT":
                body = await self._read_body(request)
                request.state.settings_bytes = len(body)  # for the fleet table, through the audit trail
                settings = check_settings(body)
                try:
                    await self._timed("write", self._bounded(self.store.put_async(instance_id, settings)))
                finally:  # also when the answer is 503: a write that timed out here may still commit
                    self._written(instance_id)
                return JSONResponse(OK)
            if request.method == "DELETE":
                try:
                    await self._timed("delete", self._run(self.store.delete, instance_id))
                finally:
                    self._written(instance_id)
                return JSONResponse(OK)
            version, read_at = self._before_read()
            stored = await self._timed("read", self._read(instance_id))
        except PayloadError as exc:
            return error(400, "error", str(exc))
        except BodyTooLarge:
            return error(413, "error", f"body is larger than http.max_body_bytes ({self.max_body} bytes)")
        except SettingsRejected as exc:
            return error(413 if exc.too_large else 400, "error", str(exc))
        except StoreUnavailable as exc:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            return error(503, "error", str(exc), **{"Retry-After": "1"})
        if identity.caller is Caller.INSTANCE and identity.generation != stored.generation:
            return access_denied(
                f"the per-VM credential of {instance_id} was revoked (its settings were deleted, or the "
                "credential revoked, since it was issued); the VM needs user data with its current credential"
            )
        answer = self._kept(instance_id, stored, version, read_at)
        if answer is None:
            return error(404, "not_found", f"no settings stored for instance {instance_id}")
        return Response(answer.body, media_type="application/json")

    def _written(self, instance_id: str) -> None:
        """A write committed: no process may answer from what it had cached for the instance."""
        if self.cache is not None:
            self.cache.forget(instance_id)

    async def _credentials(self, raw_id: str, *, revoke: bool) -> Response:
        """The VM's current credential, or (``revoke``) a new generation that ends the current one."""
        try:
            instance_id = check_instance_id(raw_id)
        except PayloadError as exc:
            return error(400, "error", str(exc))
        problem = credential_problem(instance_id)
        if problem is not None:
            return error(400, "error", problem)
        secret = self.config.http.instance_secret
        if secret is None:
            return error(404, "not_found", "per-VM credentials are off: no http.instance_secret")
        try:
            if revoke:
                try:
                    generation = await self._run(self.store.revoke, instance_id)
                finally:
                    self._written(instance_id)
                return JSONResponse({"status": "ok", "user": instance_id, "generation": generation})
            generation = await self._run(self.store.generation, instance_id)
        except StoreUnavailable as exc:
            log.warning("credentials of %s: %s", instance_id, exc)
            return error(503, "error", str(exc), **{"Retry-After": "1"})
        password = instance_token(secret, instance_id, generation)
        return JSONResponse({"status": "ok", "user": instance_id, "password": password, "generation": generation})

    async def _authorize(self, request: Request, instance_id: str, action: str) -> tuple[Identity, Response | None]:
        """Who is asking, and the refusal to send when they may not do ``action`` on ``instance_id``."""
        client = _client(request)
        header = request.headers.get("authorization")
        presented = parse_basic(header)
        user = presented[0] if presented is not None else ""
        wait = self.throttle.retry_after(client, user)
        request.state.credential = Caller.REFUSED.value if presented is not None or header else Caller.ANONYMOUS.value
        if wait is not None:
            self.metrics.blocked()
            return Identity(Caller.REFUSED), error(
                429,
                "error",
                f"too many failed authentications from {client}; retry in {wait} s",
                **{"Retry-After": str(wait)},
            )
        remembered = self.auth.known(header) if header is not None else None
        if remembered is not None:
            identity = remembered
        elif self.auth.needs_hash_check_of(presented):
            # The failure is counted before the slow check, so concurrent guesses cannot all reach bcrypt.
            reserved = self.throttle.reserve(client, user)
            identity = await anyio.to_thread.run_sync(
                self.auth.identify_of, bool(header), presented, limiter=self.hash_limiter
            )
            if identity.caller is not Caller.REFUSED:
                self.throttle.release(client, user, reserved)
        else:
            identity = self.auth.identify_of(bool(header), presented)
            if identity.caller is Caller.REFUSED:
                self.throttle.failed(client, user)
        if header is not None and remembered is None:
            self.auth.remember(header, identity)
        request.state.credential = identity.caller.value
        access = decide(
            identity.caller,
            identity.user,
            action,
            instance_id,
            anonymous_reads=self.anonymous_reads,
            address_check=self.addresses is not None,
            scraper=action == "metrics" and self._is_scraper(client),
        )
        if access.decision is Decision.ALLOW:
            return identity, None
        if access.decision is Decision.CHECK_ADDRESS:
            return identity, await self._address_check(client, instance_id)
        if access.decision is Decision.FORBIDDEN:
            return identity, forbidden(access.reason)
        return identity, access_denied(access.reason)

    def _is_scraper(self, client: str) -> bool:
        """The caller's address is one http.metrics_allow_from names."""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self.scrapers)

    async def _address_check(self, client: str, instance_id: str) -> Response | None:
        """The original's check for unauthenticated reads: the caller must hold one of the VM's addresses."""
        if client == "127.0.0.1":  # never checked, as in the original
            return None
        if not REGISTRY_KEY.fullmatch(instance_id):
            return None  # refused with 400 before anything is read; no cloud call for it
        assert self.addresses is not None
        try:
            with anyio.fail_after(self.timeout):
                found = await anyio.to_thread.run_sync(
                    self.addresses.addresses, instance_id, abandon_on_cancel=True, limiter=self.cloud_limiter
                )
        except TimeoutError:
            return error(
                503,
                "error",
                f"the cloud did not answer within http.request_timeout ({self.timeout:g} s)",
                **{"Retry-After": "1"},
            )
        except IaasUnavailable as exc:
            log.warning("address check for %s: %s", instance_id, exc)
            return error(503, "error", "cannot check the caller's address now", **{"Retry-After": "1"})
        except InstanceAmbiguous as exc:
            self.throttle.failed(client)
            log.warning("address check for %s from %s refused: %s", instance_id, client, exc)
            return error(500, "error", ADDRESS_REFUSED)
        except InstanceUnknown as exc:
            self.throttle.failed(client)  # made-up names count against the asker, as wrong passwords do
            return error(404, "not_found", str(exc))
        if client in found:
            return None
        self.throttle.failed(client)
        # The original told the caller the VM's addresses; ours tells the log, not a stranger.
        log.warning("address check for %s: %s", instance_id, mismatch_message(client, found))
        return error(500, "error", ADDRESS_REFUSED)

    def _record(
        self, request: Request, raw_id: str, identity: Identity, response: Response, action: str | None = None
    ) -> None:
        if self.audit is None:
            return
        status = response.status_code
        # A VM's own credential is refused with 401 for one reason only: it is of an older generation.
        revoked = status == 401 and identity.caller is Caller.INSTANCE
        self.audit.record(
            action or _ACTIONS[request.method],
            raw_id[:255],
            _client(request),
            identity.caller.value,
            status,
            "revoked" if revoked else _OUTCOMES.get(status, "error"),
            size=getattr(request.state, "settings_bytes", None),
        )

    async def healthz(self, _request: Request) -> Response:
        """The process is up and answering."""
        return JSONResponse(OK)

    async def readyz(self, _request: Request) -> Response:
        """The database answers; a load balancer should send traffic here only then."""
        try:
            await self._run(self.store.ping)
        except StoreUnavailable as exc:
            log.warning("not ready: %s", exc)  # the cause names the database: for the log, not for anyone asking
            return error(503, "error", "database unavailable; the registry's log has the cause")
        return JSONResponse(OK)

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

    async def _read(self, instance_id: str) -> Stored:
        """The stored settings, read the cheapest way the store offers: in line, batched, or in a thread."""
        if self.store.reads_inline:
            return self.store.get_inline(instance_id)
        if self.store.reads_async:
            return await self._bounded(self.store.get_async(instance_id))
        return await self._run(self.store.read, instance_id)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in a worker thread, bounded by http.request_timeout."""
        return await self._bounded(anyio.to_thread.run_sync(func, *args, abandon_on_cancel=True, limiter=self.limiter))

    async def _timed(self, operation: str, work: Awaitable[T]) -> T:
        """A store call, its time and failure counted for the metrics."""
        started = time.perf_counter()
        failed = True
        try:
            result = await work
            failed = False
            return result
        finally:
            self.metrics.store_call(operation, time.perf_counter() - started, failed=failed)

    async def _bounded(self, work: Awaitable[T]) -> T:
        """Await a store call for at most http.request_timeout; past it, the database counts as unavailable.

        asyncio's own timeout, not anyio's ``fail_after``: the same cancellation, ~10 us less per cold read.
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await work
        except TimeoutError:
            raise StoreUnavailable(
                f"the database did not answer within http.request_timeout ({self.timeout:g} s)"
            ) from None


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, "not_found", "no such route; the API is /instances/<id>/settings")
    if exc.status_code == 405:
        # Starlette builds Allow from a set; sorted, it is the same on every run.
        allowed = ", ".join(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()))
        return error(405, "error", f"method not allowed here; use {allowed}", Allow=allowed)
    return error(exc.status_code, "error", str(exc.detail))


async def _openapi(_request: Request) -> Response:
    return JSONResponse(OPENAPI)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return error(500, "error", "internal error; the registry log has the details")


def settings_answer(stored: str) -> bytes:
    """The body of a 200 read, encoded once: the cache keeps exactly these bytes.

    orjson writes what ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` wrote (UTF-8, the same
    escapes), in a tenth of the time: every cold read and every cache fill encodes one. Its bytes keep the
    buffer they were written in, twice their length for 4 KiB settings; the copy holds just the answer, so
    the cache's bound (``http.cache_bytes``) is what its answers take.
    """
    return bytes(memoryview(orjson.dumps({"status": "ok", "settings": stored})))


def answer_cache(config: RegistryConfig, store: SettingsStore) -> ResponseCache | None:
    """The read cache for this store, with the way it learns of other processes' writes (see ``cache``)."""
    if config.http.cache_bytes == 0:
        return None
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            return None  # one process only: nothing to share a marker with, and no file to put it beside
        return ResponseCache(SharedMarker(Path(str(url.database))), max_bytes=config.http.cache_bytes, max_seconds=None)
    if url.get_backend_name() == "postgresql":
        return ResponseCache(
            PgNotifications(store.engine), max_bytes=config.http.cache_bytes, max_seconds=FOREIGN_EXPIRY_SECONDS
        )
    if config.http.cache_seconds == 0:
        return None
    return ResponseCache(
        ChangeCounter(store.engine), max_bytes=config.http.cache_bytes, max_seconds=config.http.cache_seconds
    )


def create_app(
    config: RegistryConfig, store: SettingsStore, audit: AuditLog | None = None
) -> Callable[..., Awaitable[None]]:
    """The ASGI application: routes and JSON error handlers (the HTTP front adds the access log)."""
    return asgi_app(RegistryApi(config, store, audit))


def asgi_app(api: RegistryApi) -> Callable[..., Awaitable[None]]:
    """The registry's routes over ``api``, as a standard ASGI application."""
    store = api.store
    routes = [
        Route("/instances/{instance_id}/settings", api.settings, methods=["GET", "PUT", "DELETE"]),
        Route("/instances/{instance_id}/credentials", api.credentials, methods=["POST", "DELETE"]),
        Route("/instances/{instance_id}/events", api.events, methods=["GET"]),
        Route("/fleet", api.fleet, methods=["GET"]),
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/ui", api.ui_fleet, methods=["GET"]),
        Route("/ui/", api.ui_fleet, methods=["GET"]),
        Route("/ui/instances/{instance_id}", api.ui_instance, methods=["GET"]),
        Mount("/ui/static", StaticFiles(directory=STATIC), name="static"),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await store.aclose()  # connections opened on this event loop are closed on it

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a redirect would be built from the caller's Host header: 404 instead
    return app


def _client(request: Request) -> str:
    """The caller's address, as every check compares it."""
    return client_address(request.client.host) if request.client else "-"
