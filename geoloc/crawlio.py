"""Crawl machinery shared by the Mapillary and Flickr crawlers: a retrying JSON client that knows how the Graph and
Flickr APIs fail, a crash-safe journal of finished tasks, a concurrent task runner that resumes from it, and the
crawl outline both crawlers follow (one `crawl.json` schema, settings pinned per folder, records saved by one writer).

Hand-written (dense machinery that reads badly as a lesson); tests in `tests/test_crawlio.py`, driven in the lessons
of notebooks 01, 02 and 09.

Why a loop of its own on top of `geoloc.net`'s transport retries: these APIs fail inside answers (Flickr's
`stat: fail` code 105 at HTTP 200, Graph errors whose meaning depends on `code` more than on the status, truncated or
malformed JSON bodies), and the crawl summaries count every request and retry. How an answer is read:

| answer | meaning | what the client does |
|---|---|---|
| 401, or Graph `code` 190 / 368 (real servers send these as HTTP 500 too) | the token is bad or expired | `TokenRejected` at once |
| 429, or 403/4xx with Graph `code` 4, 17, 32, 613 or `is_transient` | throttled | back off (Retry-After), retry; `RateLimited` when exhausted |
| 5xx that `giveup(status, error)` calls hopeless (a dense Mapillary box) | asking too much | `TooDense` at once: the caller splits |
| other 5xx, dropped connections, time-outs, malformed bodies | transient | back off, retry |
| 404 / Graph code 100 subcode 33 | not there / deleted | `NotFound` / `Gone` |
| other 4xx | a request the server refuses | `ApiError` with status, code and message |

Secrets: tokens travel in headers, keys in query parameters named in `secret_params`; every URL and message that
leaves goes through `geoloc.net.redact`, and no exception is chained to one that quotes a URL.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd

from .files import FileError, atomic_path, disk_full, read_json, write_json
from .net import (ApiError, BadURL, Gone, NetError, NotFound, RateLimited, Timeout, TokenRejected, TooDense, TooLarge,
                  redact, session)

__all__ = ['ApiError', 'TokenRejected', 'RateLimited', 'NotFound', 'Gone', 'TooDense', 'RetryableError', 'redact',
           'RateLimiter', 'THROTTLE_CODES', 'TOKEN_CODES', 'graph_error', 'ApiClient', 'Journal', 'run_tasks',
           'RECORD_COLUMNS', 'save_records', 'Crawl']

THROTTLE_CODES = (4, 17, 32, 613)  # Graph API: application / user / page / custom request limits
TOKEN_CODES = (190, 368)           # Graph API: invalid or expired token; blocked for policy


class RetryableError(Exception):
    "Raised by a `check` callback for an answer that is a transient failure despite HTTP 200 (e.g. Flickr code 105)."
    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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


def graph_error(body) -> dict | None:
    "The Graph-style `error` object of an answer body (bytes, text or decoded JSON), if it has one."
    try: d = json.loads(body) if isinstance(body, (bytes, str)) else body
    except ValueError: return None
    err = d.get('error') if isinstance(d, dict) else None
    return err if isinstance(err, dict) else None


def _int(v):
    try: return int(v)
    except (TypeError, ValueError): return None


class ApiClient:
    "GET JSON from an API with retries on throttling / 5xx / dropped connections / time-outs / malformed bodies."
    def __init__(self, base_url: str, *,
                 headers: dict | None = None,        # sent on every request (e.g. Authorization: OAuth ...)
                 params: dict | None = None,         # query parameters sent on every request (e.g. api_key, format)
                 secret_params=('access_token', 'api_key'),  # query parameters whose values are never shown
                 timeout: float = 30,                # seconds to connect and between reads
                 deadline: float = 120,              # seconds for a whole answer
                 max_bytes: int = 64_000_000,        # largest answer accepted
                 max_retries: int = 8,               # retries per request before giving up
                 backoff: float = 0.5,               # first retry delay, seconds; doubles each retry (with jitter)
                 max_backoff: float = 30,            # cap of one delay, seconds (Retry-After is honoured up to 300 s)
                 calls_per_hour: float | None = None,  # client-side rate limit shared by all threads
                 pool: int = 32,                     # connections kept per host
                 giveup=None,                        # giveup(status, error) -> True: a 5xx that retrying won't fix
                 timeouts_mean_dense: int = 0,       # this many time-outs in a row for one request: TooDense (0: off)
                 token_hint: str = '',               # how to fix a rejected token (e.g. which variable to set)
                 sleep=time.sleep):
        self.base_url = base_url.rstrip('/')
        self.headers, self.params = dict(headers or {}), dict(params or {})
        self.secret_params = tuple(secret_params)
        secrets = [v for k, v in self.params.items() if k in self.secret_params and v]
        self._http = session(pool=pool, retries=0, timeout=timeout, deadline=deadline, max_bytes=max_bytes,
                             headers=self.headers, secrets=secrets)
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.limiter = RateLimiter(calls_per_hour) if calls_per_hour else None
        self.sleep, self.giveup, self.token_hint = sleep, giveup, token_hint
        self.timeouts_mean_dense = timeouts_mean_dense
        self._lock = threading.Lock()
        self.stats = Counter()

    def __repr__(self): return f'ApiClient({self.redact(self.base_url)!r}, requests={self.stats["requests"]})'

    def redact(self, text) -> str:
        "`text` without this client's secrets."
        return self._http.redact(text)

    def close(self): self._http.close()

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
        last, throttled, timeouts = 'no attempt', False, 0
        for attempt in range(self.max_retries + 1):
            if attempt: self._count('retries')
            if self.limiter: self.limiter.acquire()
            self._count('requests')
            try: r = self._http.get(url, q)
            except (TooLarge, BadURL) as e: raise ApiError(e.reason, url=self.url(path, params)) from None
            except NetError as e:
                self._count(f'errors:{type(e).__name__}')
                last = e.reason
                timeouts = timeouts + 1 if isinstance(e, Timeout) else 0
                if self.timeouts_mean_dense and timeouts >= self.timeouts_mean_dense:
                    raise TooDense(f'no answer in time, {timeouts} times: the answer is too big to send',
                                   url=self.url(path, params)) from None
                self.sleep(self._delay(attempt)); continue
            self._count(f'status:{r.status}')
            err = graph_error(r.body) if r.status >= 400 else None
            kind = self._classify(r.status, err)
            if kind == 'token': raise self._error(r.status, err, path, params, TokenRejected)
            if kind == 'throttled':
                throttled, last = True, f'HTTP {r.status} (throttled)'
                self.sleep(self._delay(attempt, r.headers.get('retry-after'))); continue
            if kind == 'dense': raise self._error(r.status, err, path, params, TooDense)
            if kind == 'transient':
                last = f'HTTP {r.status}'
                self.sleep(self._delay(attempt, r.headers.get('retry-after'))); continue
            if kind == 'refused':
                cls = NotFound if r.status == 404 else Gone if _gone(err) else ApiError
                raise self._error(r.status, err, path, params, cls)
            try: data = json.loads(r.body)
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
        cls = RateLimited if throttled and 'throttled' in last else ApiError
        raise cls(f'gave up after {self.max_retries + 1} attempts; last: {last}', url=self.url(path, params))

    def _classify(self, status: int, err: dict | None) -> str:
        "'ok', 'token', 'throttled', 'dense', 'transient' or 'refused' for an answer's status and Graph error."
        if status < 400: return 'ok'
        code = _int((err or {}).get('code'))
        if status == 401 or code in TOKEN_CODES: return 'token'
        if status == 429 or code in THROTTLE_CODES or ((err or {}).get('is_transient') and status < 500):
            return 'throttled'
        if status >= 500:
            return 'dense' if self.giveup is not None and self.giveup(status, err) else 'transient'
        return 'refused'

    def _error(self, status, err, path, params, cls=ApiError) -> ApiError:
        "An `ApiError` of class `cls` from an answer, using the Graph error shape when present."
        err = err or {}
        code, msg = _int(err.get('code')), err.get('message') or f'HTTP {status}'
        if err.get('error_user_msg') and err['error_user_msg'] not in msg: msg = f"{msg} ({err['error_user_msg']})"
        if cls is TokenRejected:
            msg = f"token rejected: {msg}. Fix: {self.token_hint or 'check the token (it is not shown here)'}"
        return cls(self.redact(msg), status=status, code=code, subcode=_int(err.get('error_subcode')),
                   url=self.url(path, params))


def _gone(err) -> bool: return bool(err) and _int(err.get('code')) == 100 and _int(err.get('error_subcode')) == 33


class Journal:
    """Crash-safe log of finished tasks: one JSON line per task with its records and child tasks.

    A line is written (and fsync'ed) only after its task has fully finished, so a crash loses at most the tasks in
    flight; a line cut short by a crash is dropped on the next open. Records are de-duplicated by `id`. A full disk
    stops the crawl with an error naming the folder, and leaves the journal as it was (the torn line is dropped)."""
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
            pos = self._f.tell()
            try:
                self._f.write(line); self._f.flush()
                if self.fsync: os.fsync(self._f.fileno())
            except OSError as err:
                try: self._f.truncate(pos)  # no torn line left behind
                except OSError: pass
                if disk_full(err):
                    raise FileError(err.errno, f"the disk holding {self.folder} is full; the crawl stopped and its "
                                               f"journal keeps every finished task. Fix: free space, then run the same "
                                               f"command again: it resumes.") from None
                raise
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


RECORD_COLUMNS = ('id', 'source', 'lat', 'lon', 'url', 'captured_at', 'sequence')  # every source has these


def save_records(df: pd.DataFrame, # records with at least `RECORD_COLUMNS` (lat, lon WGS84 degrees)
                 path, # a .parquet file
                ) -> Path:
    "Save crawl records as GeoParquet (the columns plus a point `geometry`, EPSG:4326), atomically."
    import geopandas as gpd
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing: raise ValueError(f'records lack the column(s) {missing} of the record schema {list(RECORD_COLUMNS)}.')
    g = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df['lon'], df['lat']), crs=4326)
    with atomic_path(path) as tmp: g.to_parquet(tmp, index=False)
    return Path(path)


def _now() -> str: return datetime.now(timezone.utc).isoformat(timespec='seconds').replace('+00:00', 'Z')


class Crawl:
    """The outline both crawlers follow in their output folder: `crawl.json` (one schema), the journal, the records.

    `crawl.json` holds `{"schema", "source", "settings", "api_url", "started", "finished", "summary"}`. The settings
    are what makes two runs the same crawl; a rerun with other settings is refused (naming them), one with the same
    settings resumes from the journal. Keys in `pinned` may be left `None` by a rerun: they take the saved value (a
    crawl's "until now" stays the first run's now). `out=None` crawls in a temporary folder removed at `close`."""
    SCHEMA = 1
    def __init__(self, out, source: str, settings: dict, *, pinned=(), api_url: str = ''):
        self.source, self.temporary = source, out is None
        self.folder = Path(tempfile.mkdtemp(prefix=f'geoloc-{source}-')) if out is None else Path(out).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = self.folder / 'crawl.json'
        settings = json.loads(json.dumps(settings, default=str))
        if self.manifest.exists(): self.state = self._resume(settings, pinned)
        else: self.state = {'schema': self.SCHEMA, 'source': source, 'settings': settings, 'api_url': redact(api_url),
                            'started': _now(), 'finished': None, 'summary': None}
        self._write()
        self.journal = Journal(self.folder)

    @property
    def settings(self) -> dict: return self.state['settings']

    def _resume(self, new: dict, pinned) -> dict:
        old = read_json(self.manifest, what=f'the {self.source} crawl manifest',
                        fix=f'delete {self.manifest} (the journal beside it is kept) and run the same command again.')
        if old.get('source') != self.source or 'settings' not in old:
            raise ValueError(f"{self.folder} holds {'a ' + str(old.get('source')) if old.get('source') else 'another'} "
                             f"crawl, not a {self.source} one. Fix: pass another out folder.")
        saved = old['settings']
        merged = {**new, **{k: saved[k] for k in pinned if k in saved and new.get(k) is None}}
        diff = sorted(k for k in set(saved) | set(merged) if saved.get(k) != merged.get(k))
        if diff:
            raise ValueError(f"{self.folder} holds a {self.source} crawl with other settings ({', '.join(diff)}: "
                             f"{ {k: saved.get(k) for k in diff} } there). Fix: pass another out folder, or delete "
                             f"{self.folder} to start over.")
        return {**old, 'settings': saved}

    def pin(self, key: str, value):
        "Fix a setting on the first run (e.g. the crawl's end time), saved so that reruns take it."
        self.state['settings'][key] = value
        self._write()

    def _write(self):
        if not self.temporary: write_json(self.manifest, self.state)

    def run(self, roots: list, fetch, **kwargs) -> dict:
        "`run_tasks` over this crawl's journal."
        return run_tasks(roots, fetch, journal=self.journal, **kwargs)

    def save(self, df: pd.DataFrame, summary: dict) -> Path | None:
        "Write records.parquet and the summary into crawl.json (nothing for a temporary crawl)."
        self.state.update(finished=_now(), summary=json.loads(json.dumps(summary, default=str)))
        if self.temporary: return None
        save_records(df, self.folder / 'records.parquet')
        self._write()
        return self.folder / 'records.parquet'

    def close(self):
        self.journal.close()
        if self.temporary: shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()
