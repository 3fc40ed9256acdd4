"""The asynchronous FHIR R4 client: httpx for HTTP, tenacity for retries with back-off on 429/5xx and
network faults, purgatory's circuit breaker so a failing EHR is left alone for a while instead of being
hammered, and a ceiling on what an answer may weigh. Every answer is validated before it is returned.

fhirpy was considered: it adds an object layer over the same JSON but neither a breaker, nor size limits,
nor validation, so a thin client over httpx keeps each of those in plain sight.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from lockbox.config import Settings
from lockbox.fhir.auth import auth_for
from lockbox.fhir.exceptions import FhirBadData, FhirNotConfigured, FhirRejected, FhirUnavailable
from lockbox.fhir.validation import check_incoming, check_outgoing

FHIR_JSON = "application/fhir+json"
CIRCUIT = "fhir"
# Retry-After beyond this is not waited for inside one call: the caller (a job) comes back later.
MAX_RETRY_AFTER_S = 10.0
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,31}")


class _Transient(Exception):
    """A 429 or 5xx answer: worth another try after ``retry_after`` seconds (or the back-off)."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:  # as raised, from the writer process too
        return type(self), (self.status, self.retry_after)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _issue_codes(body: bytes) -> tuple[str, ...]:
    """OperationOutcome issue codes only (``invalid``, ``duplicate`` …): diagnostics may quote data."""
    try:
        doc = json.loads(body)
        issues = doc.get("issue", []) if isinstance(doc, dict) else []
        codes = {str(i.get("code")) for i in issues if isinstance(i, dict) and i.get("code")}
        # IssueType codes are lower-case words; anything else is not repeated.
        return tuple(sorted(c for c in codes if _ISSUE_CODE.fullmatch(c)))[:5]
    except (ValueError, AttributeError):
        return ()


class FhirClient:
    """One per process and EHR (it holds the connection pool, the token and the circuit's state)."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not settings.fhir_base_url:
            raise FhirNotConfigured()
        self.settings = settings
        self.base_url = settings.fhir_base_url.rstrip("/") + "/"
        self.max_bytes = settings.fhir_max_response_bytes
        self.max_entries = settings.fhir_max_entries
        self._http = httpx.AsyncClient(
            base_url=self.base_url, auth=auth_for(settings), transport=transport,
            timeout=httpx.Timeout(settings.fhir_timeout_s), follow_redirects=False,
            headers={"Accept": FHIR_JSON, "User-Agent": "Lockbox"})
        # A refusal (4xx) or bad data is the request's fault, not the EHR's health: it does not open the circuit.
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.fhir_breaker_threshold, default_ttl=settings.fhir_breaker_reset_s,
            exclude=[FhirRejected, FhirBadData])

    async def aclose(self) -> None:
        await self._http.aclose()

    async def circuit_state(self) -> str:
        breaker = await self._breakers.get_breaker(CIRCUIT)
        return str(breaker.context.state)

    # -- the one way out ------------------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One logical call: retried on transient faults, through the circuit breaker, size-limited."""
        try:
            breaker = await self._breakers.get_breaker(CIRCUIT)
            async with breaker:
                return await self._with_retries(method, path, params, body)
        except OpenedState:
            raise FhirUnavailable("The EHR failed repeatedly; Lockbox is leaving it alone for a while.") from None

    async def _with_retries(self, method: str, path: str, params: dict[str, str] | None,
                            body: dict[str, Any] | None) -> dict[str, Any]:
        def backoff(state: Any) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(exc.retry_after, MAX_RETRY_AFTER_S)
            return float(wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)(state))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.fhir_retries + 1), wait=backoff, reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, _Transient | httpx.TransportError)))
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, path, params, body)
        except _Transient as exc:
            raise FhirUnavailable(f"The EHR kept answering HTTP {exc.status}; Lockbox will try again.") from None
        except httpx.TimeoutException:
            raise FhirUnavailable("The EHR did not answer in time; Lockbox will try again.") from None
        except httpx.TransportError as exc:
            raise FhirUnavailable(f"The EHR could not be reached ({type(exc).__name__}).") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, method: str, path: str, params: dict[str, str] | None,
                    body: dict[str, Any] | None) -> dict[str, Any]:
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": FHIR_JSON} if content is not None else {}
        request = self._http.build_request(method, path, params=params, content=content, headers=headers)
        response = await self._http.send(request, stream=True)
        try:
            raw = bytearray()
            async for chunk in response.aiter_bytes():
                raw += chunk
                if len(raw) > self.max_bytes:
                    raise FhirBadData(f"an answer larger than {self.max_bytes} bytes")
        finally:
            await response.aclose()
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Transient(status, _retry_after(response))
        if status >= 400:
            raise FhirRejected(status, _issue_codes(bytes(raw)))
        if status in (204, 205) or not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise FhirBadData("an answer that is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            raise FhirBadData("an answer that is not a FHIR resource")
        return doc

    # -- FHIR interactions ----------------------------------------------------------------------

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        if not resource_id or "/" in resource_id or len(resource_id) > 64:
            raise FhirBadData(f"a {resource_type} reference without a usable id")
        doc = await self.request("GET", f"{resource_type}/{resource_id}")
        return check_incoming(doc, expected=resource_type)

    async def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Every match (``search.mode`` match), following ``next`` links, at most ``fhir_max_entries``."""
        found: list[dict[str, Any]] = []
        page: dict[str, Any] = await self.request("GET", resource_type, params=params)
        pages = 1
        while True:
            bundle = self._searchset(page)
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry, dict) else "match"
                if mode != "match":
                    continue
                if len(found) >= self.max_entries:
                    raise FhirBadData(f"a {resource_type} search with more than {self.max_entries} matches")
                found.append(check_incoming(resource, expected=resource_type))
            nxt = self._next_link(bundle)
            if nxt is None:
                return found
            pages += 1
            if pages > 50:
                raise FhirBadData(f"a {resource_type} search with more than 50 pages")
            page = await self.request("GET", nxt)

    def _searchset(self, page: dict[str, Any]) -> dict[str, Any]:
        if page.get("resourceType") != "Bundle":
            raise FhirBadData(f"a search answered with {str(page.get('resourceType'))[:40]}, not a Bundle")
        entries = page.get("entry")
        if entries is not None and not isinstance(entries, list):
            raise FhirBadData("Bundle: entry (list_type)")
        if isinstance(entries, list) and len(entries) > self.max_entries:
            raise FhirBadData(f"a search page with more than {self.max_entries} entries")
        # The Bundle itself (links, entry shapes); resources are checked one by one, naming their type.
        check_incoming({**page, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                          for e in entries or [] if isinstance(e, dict)] or None},
                       expected="Bundle")
        return page

    def _next_link(self, bundle: dict[str, Any]) -> str | None:
        for link in bundle.get("link") or []:
            if link.get("relation") == "next" and isinstance(link.get("url"), str):
                url = link["url"]
                # Only ever follow links back to the same EHR: a next link elsewhere would carry our token.
                if urlsplit(url).netloc and not url.startswith(self.base_url):
                    raise FhirBadData("a next link to another server")
                return url.removeprefix(self.base_url)
        return None

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle, validated first; returns the response Bundle, validated."""
        check_outgoing(bundle)
        answer = await self.request("POST", "", body=bundle)
        answer = check_incoming({k: v for k, v in answer.items() if k != "entry"} | {
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in answer.get("entry") or []
                      if isinstance(e, dict)] or None}, expected="Bundle")
        return answer

    async def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        check_outgoing(resource)
        return await self.request("POST", str(resource["resourceType"]), body=resource)


def references(items: Iterable[Any], *types: str) -> list[tuple[str, str]]:
    """(type, id) of relative references among ``items`` whose type is one of ``types``."""
    out = []
    for item in items:
        ref = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(ref, str) or ref.count("/") != 1:
            continue
        kind, rid = ref.split("/")
        if kind in types and rid:
            out.append((kind, rid))
    return out
