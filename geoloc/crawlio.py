"""Crawl machinery shared by the Mapillary and Flickr crawlers: a retrying JSON client, a crash-safe journal of
finished tasks, and a concurrent task runner that resumes from the journal.

Hand-written (dense machinery that reads badly as a lesson); tests in `tests/test_crawlio.py`, driven in the lessons
of notebooks 01 and 02.

Why not urllib3's `Retry` alone: besides 429/5xx and dropped connections, these APIs fail inside a 200 answer
(Flickr's `stat: fail` code 105, truncated or malformed JSON bodies), and the crawl summaries must count every
request and retry. One explicit loop handles both levels and counts them.

Secrets: tokens and keys travel in headers or in query parameters named in `secret_params`; every URL that reaches a
message, a log line or an exception goes through `redact`, and exceptions from `requests` (whose messages carry the
full URL) are never chained.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
import requests
from requests.adapters import HTTPAdapter

__all__ = ['ApiError', 'TokenRejected', 'RetryableError', 'redact', 'RateLimiter', 'ApiClient', 'Journal',
           'run_tasks']


class ApiError(RuntimeError):
    "An API answer that retrying will not fix (or retries exhausted). Carries `status`, `code`, `message`, `url`."
    def __init__(self, message: str, *, status: int | None = None, code=None, url: str = ''):
        self.status, self.code, self.message, self.url = status, code, message, url
        where = f' ({url})' if url else ''
        super().__init__(f'{message}{where}')


class TokenRejected(ApiError):
    "The API rejected the token or key (HTTP 401 / Graph code 190, Flickr code 100): stop at once, do not loop."


class RetryableError(Exception):
    "Raised by a `check` callback for an answer that is a transient failure despite HTTP 200 (e.g. Flickr code 105)."
    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def redact(text, secrets=(), params=('access_token', 'api_key', 'token', 'key', 'oauth_token')) -> str:
    "`text` with the values of secret query parameters and every string in `secrets` replaced by `***`."
    text = str(text)
    for s in secrets:
        if s: text = text.replace(str(s), '***')
    if params:
        names = '|'.join(re.escape(p) for p in params)
        text = re.sub(rf'(?i)((?:^|[?&;\s"\']){{1}}(?:{names})=)[^&\s"\'#]*', r'\1***', text)
        text = re.sub(r'(?i)(OAuth\s+)(?=[^\s"\',]*[0-9|])[^\s"\',]{12,}', r'\1***', text)  # token-like words only
    return text


class RateLimiter:
    "Client-side limit of `calls_per_hour` shared by all threads (GCRA: calls evenly spaced after a small burst)."
    def __init__(self, calls_per_hour: float, *, burst: int = 10, clock=time.monotonic, sleep=time.sleep):
        if calls_per_hour <= 0: raise ValueError(f'calls_per_hour must be > 0, got {calls_per_hour}')
        self.interval, self.burst, self.clock, self.sleep = 3600.0 / calls_per_hour, max(1, burst), clock, sleep
        self._lock = threading.Lock()
        self._tat = clock()  # theoretical arrival time of the next call
        self.waited = 0.0

    def acquire(self):
        "Block until one more call is allowed."
        with self._lock:
            now = self.clock()
            tat = max(self._tat, now)
            delay = max(0.0, tat - now - (self.burst - 1) * self.interval)
            self._tat = tat + self.interval
            self.waited += delay
        if delay > 0: self.sleep(delay)


_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              requests.exceptions.ContentDecodingError)


class ApiClient:
    "GET JSON from an API with retries on 429 / 5xx / timeouts / dropped connections / malformed bodies."
    def __init__(self, base_url: str, *,
                 headers: dict | None = None,        # sent on every request (e.g. Authorization: OAuth ...)
                 params: dict | None = None,         # query parameters sent on every request (e.g. api_key, format)
                 secret_params=('access_token', 'api_key'),  # query parameters whose values are never shown
                 timeout: float = 30,                # seconds per request
                 max_retries: int = 8,               # retries per request before giving up
                 backoff: float = 0.5,               # first retry delay, seconds; doubles each retry (with jitter)
                 max_backoff: float = 30,            # cap of one delay, seconds (Retry-After is honoured up to 300 s)
                 calls_per_hour: float | None = None,  # client-side rate limit shared by all threads
                 pool: int = 32,                     # connections kept per host
                 giveup=None,                        # giveup(status, error_json) -> True: a 5xx that retrying won't fix
                 sleep=time.sleep):
        self.base_url = base_url.rstrip('/')
        self.headers, self.params = dict(headers or {}), dict(params or {})
        self.secret_params = tuple(secret_params)
        self._secrets = [v for k, v in self.params.items() if k in self.secret_params and v]
        self._secrets += [v.split(None, 1)[-1] for k, v in self.headers.items() if k.lower() == 'authorization' and v]
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        self.limiter = RateLimiter(calls_per_hour) if calls_per_hour else None
        self.pool, self.sleep, self.giveup = pool, sleep, giveup
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stats = Counter()

    def __repr__(self): return f'ApiClient({self.base_url!r}, requests={self.stats["requests"]})'

    def redact(self, text) -> str:
        "`text` without this client's secrets."
        return redact(text, self._secrets, self.secret_params)

    def _session(self) -> requests.Session:
        s = getattr(self._local, 'session', None)
        if s is None:
            s = requests.Session()
            ad = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool, max_retries=0)
            s.mount('http://', ad); s.mount('https://', ad)
            s.headers.update({'User-Agent': 'geoloc (https://github.com/geoloc-dev/geoloc)', **self.headers})
            self._local.session = s
        return s

    def _count(self, *keys):
        with self._lock:
            for k in keys: self.stats[k] += 1

    def url(self, path: str = '', params: dict | None = None) -> str:
        "The redacted URL of a request, for messages."
        p = {**self.params, **(params or {})}
        u = f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url
        return self.redact(f'{u}?{urlencode(p)}' if p else u)

    def _delay(self, attempt: int, retry_after=None) -> float:
        if retry_after is not None:
            try: return min(max(float(retry_after), 0.0), 300.0)
            except (TypeError, ValueError): pass
        return min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.5)

    def get_json(self, path: str = '', params: dict | None = None, *, check=None):
        "GET `path` with `params`; the decoded JSON. `check(data)` may raise `RetryableError` or `ApiError`."
        url = f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url
        q = {**self.params, **(params or {})}
        last = 'no attempt'
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count('retries')
            if self.limiter: self.limiter.acquire()
            self._count('requests')
            retry_after = None
            try:
                r = self._session().get(url, params=q, timeout=self.timeout)
                body = r.content
            except _TRANSIENT as e:
                self._count('errors:' + type(e).__name__)
                last = f'{type(e).__name__} (connection dropped or timed out)'
                self.sleep(self._delay(attempt)); continue
            self._count(f'status:{r.status_code}')
            if r.status_code >= 500 and self.giveup is not None and self.giveup(r.status_code, _error_json(body)):
                raise self._error(r, body, path, q)
            if r.status_code == 429 or r.status_code >= 500:
                retry_after = r.headers.get('Retry-After')
                last = f'HTTP {r.status_code}'
                self.sleep(self._delay(attempt, retry_after)); continue
            if r.status_code >= 400:
                raise self._error(r, body, path, q)
            try: data = json.loads(body)
            except ValueError:
                self._count('errors:malformed')
                last = 'malformed JSON body'
                self.sleep(self._delay(attempt)); continue
            if check is not None:
                try: check(data)
                except RetryableError as e:
                    self._count('errors:retryable')
                    last = str(e)
                    self.sleep(self._delay(attempt, e.retry_after)); continue
            return data
        raise ApiError(f'gave up after {self.max_retries + 1} attempts; last: {last}', url=self.url(path, params))

    def _error(self, r, body, path, params) -> ApiError:
        "An `ApiError` (or `TokenRejected`) from a 4xx answer, using the Graph error shape when present."
        err = _error_json(body) or {}
        code, msg = err.get('code'), err.get('message') or f'HTTP {r.status_code}'
        msg = self.redact(msg)
        cls = TokenRejected if r.status_code == 401 or code == 190 else ApiError
        if cls is TokenRejected: msg = f'token rejected: {msg}. Fix: check the token (it is not shown here)'
        return cls(msg, status=r.status_code, code=code, url=self.url(path, params))


def _error_json(body) -> dict | None:
    "The Graph-style `error` object of an answer body, if it has one."
    try: err = json.loads(body).get('error')
    except (ValueError, AttributeError): return None
    return err if isinstance(err, dict) else None


class Journal:
    """Crash-safe log of finished tasks: one JSON line per task with its records and child tasks.

    A line is written (and fsync'ed) only after its task has fully finished, so a crash loses at most the tasks in
    flight; a line cut short by a crash is dropped on the next open. Records are de-duplicated by `id`."""
    def __init__(self, folder, name: str = 'journal.jsonl', *, fsync: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path, self.fsync = self.folder / name, fsync
        self._lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        self.dropped_lines = 0
        self._load()
        self._f = open(self.path, 'ab')

    def _load(self):
        if not self.path.exists(): return
        data = self.path.read_bytes()
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b'\n'): break  # cut short by a crash
            try: e = json.loads(line)
            except ValueError:
                self.dropped_lines += 1; good += len(line); continue
            self.entries.setdefault(e['key'], e)
            good += len(line)
        if good < len(data):
            self.dropped_lines += 1
            with open(self.path, 'r+b') as f: f.truncate(good)

    def __contains__(self, key) -> bool: return key in self.entries
    def __len__(self) -> int: return len(self.entries)
    def __repr__(self): return f'Journal({self.path}, {len(self)} tasks)'

    def commit(self, task: dict, records: list, children: list = (), meta: dict | None = None):
        "Record that `task` finished with `records` and `children` (atomically, one line)."
        e = {'key': task['key'], 'task': task, 'records': list(records), 'children': list(children), 'meta': meta or {}}
        line = (json.dumps(e, separators=(',', ':'), default=str) + '\n').encode()
        with self._lock:
            if e['key'] in self.entries: return
            self._f.write(line); self._f.flush()
            if self.fsync: os.fsync(self._f.fileno())
            self.entries[e['key']] = e

    def records(self) -> pd.DataFrame:
        "All records, de-duplicated by `id` (first kept), in journal order."
        rows = [r for e in self.entries.values() for r in e['records']]
        df = pd.DataFrame(rows)
        return df.drop_duplicates('id', keep='first').reset_index(drop=True) if 'id' in df else df

    def n_records(self) -> tuple[int, int]:
        "(records written, unique ids)."
        ids = [r.get('id') for e in self.entries.values() for r in e['records']]
        return len(ids), len(set(ids))

    def close(self):
        with self._lock:
            if not self._f.closed: self._f.close()

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()


def _progress(enabled: bool, desc: str):
    if not enabled: return None
    from tqdm.auto import tqdm
    return tqdm(total=0, desc=desc, unit='task', dynamic_ncols=True, leave=True)


def run_tasks(roots: list, # JSON-able task dicts, each with a stable, unique 'key'
              fetch, # fetch(task) -> (records, children[, meta: dict]); raise to abort the run
              *,
              journal: Journal, # finished tasks are replayed from here, never fetched again
              workers: int = 8, # concurrent fetches (threads)
              progress: bool = True, # a progress bar over tasks
              desc: str = 'crawling') -> dict: # summary: tasks, fetched, replayed, records, unique, seconds, depth
    "Run `fetch` over `roots` and every child task they produce, concurrently, resuming from `journal`."
    t0 = time.monotonic()
    seen, queue = set(), deque()
    replayed = fetched = 0
    depth = 0

    def push(task):
        nonlocal replayed, depth
        stack = [task]
        while stack:  # replay finished tasks without fetching them: their children come from the journal
            t = stack.pop()
            if t['key'] in seen: continue
            seen.add(t['key'])
            depth = max(depth, int(t.get('depth', 0)))
            if t['key'] in journal:
                replayed += 1
                stack.extend(journal.entries[t['key']]['children'])
            else: queue.append(t)

    for t in roots: push(t)
    bar = _progress(progress, desc)
    if bar is not None: bar.total = len(seen); bar.update(replayed); bar.refresh()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=desc)
    running, new_records = {}, 0
    try:
        while queue or running:
            while queue and len(running) < workers * 2:
                t = queue.popleft()
                running[pool.submit(fetch, t)] = t
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                t = running.pop(fut)
                records, children, *meta = fut.result()  # an exception aborts the run; finished work stays journaled
                journal.commit(t, records, children, meta[0] if meta else None)
                fetched += 1
                new_records += len(records)
                before = len(seen)
                for c in children: push(c)
                if bar is not None:
                    bar.total += len(seen) - before
                    bar.set_postfix(records=new_records, refresh=False)
                    bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None: bar.close()
    written, unique = journal.n_records()
    return {'tasks': len(seen), 'fetched': fetched, 'replayed': replayed, 'records': written, 'unique': unique,
            'depth': depth, 'seconds': round(time.monotonic() - t0, 3)}
