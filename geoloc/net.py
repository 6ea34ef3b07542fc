"""The one HTTP layer of geoloc: one session factory, one User-Agent, one `redact`, the services' addresses, typed
errors, and fetches that end on time and refuse what is too big.

Hand-written (a socket watchdog reads badly as a lesson); tests in `tests/test_net.py`, driven in the lesson of
notebook `09_machinery`. Every module that talks HTTP goes through here: the crawlers (through `geoloc.crawlio`),
boundary downloads, image downloads and prediction from URLs.

What a fetch guarantees:
- **An overall deadline** per request (`deadline`, seconds from the first byte sent to the last byte read). urllib3's
  timeouts apply to each socket read, so a server that trickles one byte every two seconds would otherwise hold a
  worker forever; a watchdog thread shuts the socket down when the deadline passes, in any phase.
- **A size cap** (`max_bytes`) on the body as decoded: a `Content-Length` over the cap is refused before the body is
  read, a body (or a gzip bomb) that grows past it is cut off as soon as it does.
- **Redirects** are followed up to `redirects` times, and only to http(s) URLs.
- **Transport faults** (refused or dropped connections, read errors) are retried by urllib3's `Retry` with backoff;
  what the answer *means* (429, 5xx, an API's error body) is the caller's to decide (`geoloc.crawlio.ApiClient`).
- **Errors say what happened**: `ConnectionRefused` is not reported as a time-out, and no message carries a token,
  key, signature or `user:pass@`: everything that reaches a message goes through `redact`, which is also installed
  as a filter on urllib3's and requests' loggers.
"""
from __future__ import annotations

import errno
import heapq
import itertools
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from . import __version__

__all__ = ['USER_AGENT', 'MAPILLARY_GRAPH', 'MAPILLARY_TILES', 'FLICKR_REST', 'CLICK_THAT_HOOD', 'BCN_GEODATA',
           'OSM_TILES', 'OVERPASS', 'NOMINATIM', 'NetError', 'ConnectionRefused', 'Timeout', 'TooLarge', 'BadURL',
           'ApiError', 'TokenRejected', 'RateLimited', 'NotFound', 'Gone', 'TooDense', 'redact', 'check_secret',
           'check_api_url', 'install_log_redaction', 'Response', 'Session', 'session']

USER_AGENT = f'geoloc/{__version__} (+https://github.com/geoloc-dev/geoloc)'

# The services' addresses, in one place.
MAPILLARY_GRAPH = 'https://graph.mapillary.com'
MAPILLARY_TILES = 'https://tiles.mapillary.com/maps/vtp/mly1_public/2/{z}/{x}/{y}'
FLICKR_REST = 'https://api.flickr.com/services/rest'
CLICK_THAT_HOOD = 'https://raw.githubusercontent.com/codeforgermany/click_that_hood/main/public/data/{slug}.geojson'
BCN_GEODATA = 'https://raw.githubusercontent.com/martgnz/bcn-geodata/master'
OSM_TILES = 'https://tile.openstreetmap.org/{z}/{x}/{y}.png'
OVERPASS = 'https://overpass-api.de/api'
NOMINATIM = 'https://nominatim.openstreetmap.org/'


# ---------------------------------------------------------------------------------------------------------- errors
class NetError(ConnectionError):
    "A request that did not get an answer: `reason` is short and safe to show; `url` is redacted."
    def __init__(self, reason: str, *, url: str = '', status: int | None = None):
        self.reason, self.url, self.status = reason, redact(url), status
        super().__init__(f'{reason}' + (f' ({self.url})' if self.url else ''))

class ConnectionRefused(NetError): "Nothing listens at the address (the server is down, or the URL is wrong)."
class Timeout(NetError): "No answer within the time allowed (connecting, between reads, or the overall deadline)."
class TooLarge(NetError): "The body is larger than the cap."
class BadURL(NetError): "A URL geoloc will not fetch (not http(s), malformed, or a redirect elsewhere)."


class ApiError(RuntimeError):
    "An API answer that retrying will not fix (or retries exhausted). Carries `status`, `code`, `message`, `url`."
    def __init__(self, message: str, *, status: int | None = None, code=None, url: str = '', subcode=None):
        self.status, self.code, self.subcode, self.message, self.url = status, code, subcode, redact(message), redact(url)
        super().__init__(self.message + (f' ({self.url})' if self.url else ''))

class TokenRejected(ApiError): "The API rejected the token or key: stop at once, do not retry."
class RateLimited(ApiError): "The API throttles this client (retries exhausted)."
class NotFound(ApiError): "The thing asked for does not exist (or never did)."
class Gone(ApiError): "The thing asked for existed and was deleted (Mapillary: code 100, subcode 33)."
class TooDense(ApiError): "A search that asked for too much at once (a dense Mapillary box): split it, do not retry."


# ---------------------------------------------------------------------------------------------------------- secrets
_PARAMS = ('access_token', 'api_key', 'apikey', 'key', 'token', 'oauth_token', 'client_secret', 'secret', 'password',
           'sig', 'signature', 'x-amz-signature', 'x-amz-credential', 'x-amz-security-token', 'oh', '_nc_ohc')
_PARAM_RE = re.compile(r'(?i)((?:^|[?&;\s"\'])(?:' + '|'.join(map(re.escape, _PARAMS)) + r')=)[^&\s"\'#<>]+')
_AUTH_RE = re.compile(r'(?i)\b((?:OAuth|Bearer|Basic|Token)\s+)(?=[^\s"\',;]*[0-9|+/=_-])[^\s"\',;]{8,}')  # token-like words
_USERINFO_RE = re.compile(r'(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s"\'<>]+@')
_HEADER_RE = re.compile(r'(?i)(["\']?(?:authorization|x-api-key|api[-_]key)["\']?\s*[:=]\s*["\']?'
                        r'(?:(?:OAuth|Bearer|Basic|Token)\s+)?)(?!\*\*\*|(?:OAuth|Bearer|Basic|Token)\s)[^"\'\s,}]+')

def redact(text, secrets=()) -> str:
    "`text` without secrets: every string in `secrets`, secret query parameters, auth headers and `user:pass@`."
    text = str(text)
    for s in secrets:
        if s and len(str(s)) >= 4: text = text.replace(str(s), '***')
    text = _PARAM_RE.sub(r'\1***', text)
    text = _AUTH_RE.sub(r'\1***', text)
    text = _HEADER_RE.sub(r'\1***', text)
    return _USERINFO_RE.sub(r'\1***@', text)


def check_secret(value: str, name: str) -> str:
    "A token or key stripped of surrounding whitespace; `ValueError` (never quoting it) if it holds control characters."
    v = '' if value is None else str(value).strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"{name} contains a line break or another control character, so it cannot be sent in an "
                         f"HTTP header (its value is not shown). Fix: set {name} to the key alone, on one line.")
    return v


def check_api_url(url: str, name: str = '--api-url') -> str:
    "An API base URL that is http(s) and carries no credentials (tokens belong in environment variables)."
    u = str(url or '').strip()
    parts = urlsplit(u)
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise ValueError(f"{name} {redact(u)!r} is not an http(s) URL. Fix: pass the API's address, e.g. "
                         "https://graph.mapillary.com.")
    if redact(u) != u or parts.username or parts.password:
        raise ValueError(f"{name} carries a token, key or password ({redact(u)}). Fix: pass the address alone and the "
                         "secret through its environment variable (--token-env / --key-env); URLs end up in logs.")
    return u.rstrip('/')


class _RedactFilter(logging.Filter):
    def filter(self, record):
        try: msg = record.getMessage()
        except Exception: return True
        clean = redact(msg)
        if clean != msg: record.msg, record.args = clean, ()
        return True

_FILTER = _RedactFilter()

def install_log_redaction():
    "Redact secrets in what urllib3's and requests' loggers print (their DEBUG lines show whole URLs)."
    for name in ('urllib3', 'urllib3.connectionpool', 'urllib3.util.retry', 'requests'):
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters: lg.addFilter(_FILTER)
        for h in lg.handlers:
            if _FILTER not in h.filters: h.addFilter(_FILTER)

install_log_redaction()


# ---------------------------------------------------------------------------------------------------------- deadlines
class _Watchdog:
    "One daemon thread that shuts down the sockets of requests whose deadline has passed."
    def __init__(self):
        self._heap, self._lock, self._cv, self._ids = [], threading.Lock(), None, itertools.count()
        self._cv = threading.Condition(self._lock)
        self._thread = None

    def watch(self, when: float, job: '_Job'):
        with self._cv:
            heapq.heappush(self._heap, (when, next(self._ids), job))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name='geoloc-net-watchdog', daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self):
        with self._cv:
            while True:
                while self._heap and self._heap[0][2].done: heapq.heappop(self._heap)
                if not self._heap:
                    if not self._cv.wait(30) and not self._heap: self._thread = None; return
                    continue
                when, _, job = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0: self._cv.wait(wait); continue
                heapq.heappop(self._heap)
                job.expire()

_WATCHDOG = _Watchdog()
_local = threading.local()


class _Job:
    "One fetch under a deadline: the connection it uses, and whether it has ended."
    def __init__(self, deadline: float):
        self.deadline, self.conn, self.done, self.expired = deadline, None, False, False

    def expire(self):  # called by the watchdog, under its lock
        if self.done: return
        self.expired = True
        sock = getattr(self.conn, 'sock', None)
        if sock is not None:
            try: sock.shutdown(socket.SHUT_RDWR)
            except OSError: pass

    def finish(self):
        with _WATCHDOG._lock: self.done = True


class _DeadlineMixin:
    "A connection pool whose requests tell the current fetch (`_local.job`) which connection they use."
    def _make_request(self, conn, *args, **kwargs):
        job = getattr(_local, 'job', None)
        if job is not None:
            with _WATCHDOG._lock: job.conn = conn
            if job.expired: raise urllib3.exceptions.ReadTimeoutError(self, '', 'deadline passed')
        return super()._make_request(conn, *args, **kwargs)

class _Pool(_DeadlineMixin, HTTPConnectionPool): pass
class _TLSPool(_DeadlineMixin, HTTPSConnectionPool): pass


# ---------------------------------------------------------------------------------------------------------- fetching
@dataclass
class Response:
    "A whole answer: status, headers (lower-case names), body (decoded bytes), the final URL (redacted)."
    status: int
    headers: dict = field(repr=False)
    body: bytes = field(repr=False)
    url: str = ''

    def json(self):
        import json
        return json.loads(self.body)

    def __repr__(self): return f'Response({self.status}, {len(self.body):,} bytes, {self.url!r})'


def _reason(e: BaseException) -> type[NetError] | None:
    "The geoloc error class and a short reason for a urllib3 / socket exception."
    while isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None: e = e.reason
    if isinstance(e, urllib3.exceptions.NewConnectionError) or isinstance(e, ConnectionRefusedError):
        if isinstance(e, ConnectionRefusedError) or 'refused' in str(e).lower() or getattr(e, 'errno', None) == errno.ECONNREFUSED:
            return ConnectionRefused, 'connection refused'
        if 'name or service' in str(e).lower() or 'resolution' in str(e).lower(): return NetError, 'host not found'
        return NetError, 'could not connect'
    if isinstance(e, urllib3.exceptions.NameResolutionError): return NetError, 'host not found'
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError): return Timeout, 'timed out connecting'
    if isinstance(e, (urllib3.exceptions.ReadTimeoutError, socket.timeout, TimeoutError)): return Timeout, 'timed out reading'
    if isinstance(e, urllib3.exceptions.SSLError): return NetError, 'TLS error'
    if isinstance(e, (urllib3.exceptions.LocationValueError, urllib3.exceptions.URLSchemeUnknown)): return BadURL, 'bad URL'
    if isinstance(e, urllib3.exceptions.ProtocolError): return NetError, 'connection broken (incomplete answer)'
    if isinstance(e, urllib3.exceptions.DecodeError): return NetError, 'undecodable body (bad gzip/deflate)'
    if isinstance(e, OSError): return NetError, f'network error ({type(e).__name__})'
    return None


class Session:
    "Connection pools with one User-Agent and transport retries; `get` fetches one URL whole, on time, under a cap."
    def __init__(self, *,
                 pool: int = 16,              # connections kept per host
                 retries: int = 3,            # transport retries (refused/dropped connections, read errors)
                 backoff: float = 0.25,       # first transport retry after about this many seconds, doubling
                 timeout: float = 30,         # seconds to connect, and between two reads
                 deadline: float = 120,       # seconds for a whole request, headers and body
                 max_bytes: int = 50_000_000, # largest body accepted, decoded
                 redirects: int = 5,          # redirects followed (to http(s) only)
                 headers: dict = None,        # sent with every request (a token goes here, never in a URL)
                 secrets=()):                 # strings never shown in messages (besides the usual parameters)
        self.timeout, self.deadline, self.max_bytes, self.redirects = timeout, deadline, max_bytes, redirects
        self.headers = {'User-Agent': USER_AGENT, **(headers or {})}
        self.secrets = [s for s in secrets if s] + [v.split(None, 1)[-1] for k, v in self.headers.items()
                                                     if k.lower() == 'authorization' and v]
        self.retry = Retry(total=retries, connect=retries, read=retries, status=0, other=0, redirect=redirects,
                           backoff_factor=backoff, backoff_max=8, allowed_methods=frozenset({'GET', 'HEAD'}),
                           raise_on_redirect=True, raise_on_status=False, respect_retry_after_header=False)
        self._pm = urllib3.PoolManager(num_pools=32, maxsize=pool, block=False, retries=self.retry,
                                       headers=self.headers)
        self._pm.pool_classes_by_scheme = {'http': _Pool, 'https': _TLSPool}

    def __repr__(self): return f'Session(timeout={self.timeout}, deadline={self.deadline}, max_bytes={self.max_bytes:,})'
    def redact(self, text) -> str: return redact(text, self.secrets)
    def close(self): self._pm.clear()
    def __enter__(self): return self
    def __exit__(self, *exc): self.close()

    def get(self, url: str, params: dict = None, *, headers: dict = None, timeout: float = None,
            deadline: float = None, max_bytes: int = None, method: str = 'GET') -> Response:
        "GET `url` (with `params`): the whole answer, any status; `NetError` subclasses when there is none."
        full = url + (('&' if '?' in url else '?') + urlencode(params) if params else '')
        shown = self.redact(full)
        parts = urlsplit(full)
        if parts.scheme not in ('http', 'https') or not parts.netloc: raise BadURL('not an http(s) URL', url=shown)
        timeout = self.timeout if timeout is None else timeout
        cap = self.max_bytes if max_bytes is None else max_bytes
        job = _Job(time.monotonic() + (self.deadline if deadline is None else deadline))
        _WATCHDOG.watch(job.deadline, job)
        _local.job = job
        try:
            try:
                r = self._pm.request(method, full, headers=headers, preload_content=False, redirect=True,
                                     timeout=urllib3.Timeout(connect=timeout, read=timeout))
            except urllib3.exceptions.MaxRetryError as e:
                if isinstance(e.reason, urllib3.exceptions.ResponseError) and 'redirect' in str(e.reason):
                    raise BadURL(f'more than {self.redirects} redirects', url=shown) from None
                raise self._error(e, job, shown) from None
            except (urllib3.exceptions.HTTPError, OSError) as e: raise self._error(e, job, shown) from None
            try:
                final = r.geturl() if '://' in (r.geturl() or '') else full
                if urlsplit(final).scheme not in ('', 'http', 'https'): raise BadURL('redirected off http(s)', url=shown)
                size = r.headers.get('Content-Length')
                if size and size.isdigit() and int(size) > cap:
                    raise TooLarge(f'body of {int(size):,} bytes is over the {cap:,}-byte cap', url=shown, status=r.status)
                body, got = [], 0
                while True:
                    if time.monotonic() > job.deadline: raise Timeout('deadline passed while reading', url=shown)
                    chunk = r.read1(1 << 16, decode_content=True)
                    if not chunk: break
                    got += len(chunk)
                    if got > cap: raise TooLarge(f'body over the {cap:,}-byte cap', url=shown, status=r.status)
                    body.append(chunk)
                return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, b''.join(body),
                                self.redact(final))
            except NetError: r.close(); raise
            except (urllib3.exceptions.HTTPError, OSError) as e: r.close(); raise self._error(e, job, shown) from None
            finally: r.release_conn()
        finally:
            job.finish()
            _local.job = None

    def _error(self, e, job, shown) -> NetError:
        if job.expired: return Timeout('deadline passed', url=shown)
        kind = _reason(e)
        if kind is None: return NetError(f'request failed ({type(e).__name__})', url=shown)
        cls, reason = kind
        return cls(reason, url=shown)


def session(**kwargs) -> Session:
    "A `Session` (see its options): the one way geoloc opens HTTP connections."
    return Session(**kwargs)
