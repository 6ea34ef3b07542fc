"""geoloc.crawlio against a scripted HTTP server on 127.0.0.1: retries, errors, secrets, the journal, resuming."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from geoloc.crawlio import (ApiClient, ApiError, Journal, RateLimiter, RetryableError, TokenRejected, redact,
                            run_tasks)

TOKEN = 'MLY|1234567890|secret-token-value'


class Scripted(BaseHTTPRequestHandler):
    "Answers each request with the next scripted reply for its path; default: 200 with the path and query echoed."
    def log_message(self, *a): pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.seen.append((self.path, dict(self.headers)))
            script = srv.script.get(self.path.split('?')[0], [])
            reply = script.pop(0) if script else ('ok',)
        kind = reply[0]
        if kind == 'drop':
            self.connection.shutdown(2); self.connection.close(); self.close_connection = True; return
        if kind == 'sleep':
            time.sleep(reply[1]); reply = ('ok',); kind = 'ok'
        if kind == 'ok':
            status, body, headers = 200, json.dumps({'path': self.path}).encode(), {}
        else:
            status, body, headers = reply[1], reply[2].encode() if isinstance(reply[2], str) else reply[2], reply[3] if len(reply) > 3 else {}
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        for k, v in headers.items(): self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Scripted)
    srv.lock, srv.seen, srv.script = threading.Lock(), [], {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown(); srv.server_close()


def base(srv): return f'http://127.0.0.1:{srv.server_address[1]}'


def client(srv, **kw):
    kw = {'backoff': 0.01, 'max_backoff': 0.05, 'timeout': 2, **kw}
    return ApiClient(base(srv), headers={'Authorization': f'OAuth {TOKEN}'}, params={'access_token': TOKEN}, **kw)


def test_retries_transient_failures_then_succeeds(server):
    server.script['/images'] = [('err', 429, '{}', {'Retry-After': '0'}), ('err', 503, 'busy'), ('drop',),
                                ('err', 200, '{"data": [1, 2'), ('ok',)]
    c = client(server)
    assert c.get_json('images', {'bbox': '1,2,3,4'})['path'].startswith('/images?')
    assert c.stats['requests'] == 5 and c.stats['retries'] == 4
    assert c.stats['status:429'] == 1 and c.stats['status:503'] == 1 and c.stats['errors:malformed'] == 1


def test_retry_after_is_honoured(server):
    server.script['/x'] = [('err', 429, '{}', {'Retry-After': '1'}), ('ok',)]
    slept = []
    c = client(server, sleep=slept.append)
    c.get_json('x')
    assert slept == [1.0]


def test_token_rejected_stops_at_once_and_hides_the_token(server):
    body = json.dumps({'error': {'message': 'Invalid OAuth access token', 'type': 'OAuthException', 'code': 190}})
    server.script['/images'] = [('err', 401, body)] * 5
    c = client(server)
    with pytest.raises(TokenRejected) as e: c.get_json('images', {'bbox': '1,2,3,4'})
    assert c.stats['requests'] == 1
    assert 'token rejected' in str(e.value) and TOKEN not in str(e.value) and 'access_token=***' in str(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_client_errors_carry_status_and_graph_code(server):
    body = json.dumps({'error': {'message': 'Bbox area too large', 'type': 'MLYApiException', 'code': 100}})
    server.script['/images'] = [('err', 400, body)]
    with pytest.raises(ApiError) as e: client(server).get_json('images')
    assert e.value.status == 400 and e.value.code == 100 and 'Bbox area too large' in e.value.message


def test_gives_up_after_max_retries(server):
    server.script['/x'] = [('err', 500, 'no')] * 10
    c = client(server, max_retries=2)
    with pytest.raises(ApiError, match='gave up after 3 attempts; last: HTTP 500') as e: c.get_json('x')
    assert TOKEN not in str(e.value) and c.stats['requests'] == 3


def test_timeouts_are_retried(server):
    server.script['/slow'] = [('sleep', 1.5)]
    c = client(server, timeout=0.3)
    assert c.get_json('slow')['path'].startswith('/slow')
    assert c.stats['errors:Timeout'] == 1


def test_check_callback_turns_a_200_into_a_retry(server):
    def check(d):
        if d['path'].startswith('/flaky') and server.seen.__len__() < 3: raise RetryableError('code 105')
    c = client(server)
    c.get_json('flaky', check=check)
    assert c.stats['errors:retryable'] == 2 and c.stats['requests'] == 3


def test_redact():
    u = f'https://graph.mapillary.com/images?access_token={TOKEN}&bbox=1,2,3,4&api_key=abc123'
    r = redact(u)
    assert TOKEN not in r and 'abc123' not in r and 'bbox=1,2,3,4' in r
    assert redact(f'Authorization: OAuth {TOKEN}') == 'Authorization: OAuth ***'
    assert redact('Invalid OAuth access token signature') == 'Invalid OAuth access token signature'
    assert redact(f'the key {TOKEN} leaked', [TOKEN]) == 'the key *** leaked'


def test_rate_limiter_spaces_calls():
    now = [0.0]
    def sleep(d): now[0] += d
    lim = RateLimiter(3600, burst=2, clock=lambda: now[0], sleep=sleep)  # one call per second after a burst of 2
    for _ in range(12): lim.acquire()
    assert now[0] == pytest.approx(10.0)


def test_journal_survives_a_torn_last_line(tmp_path):
    j = Journal(tmp_path)
    j.commit({'key': 'a'}, [{'id': '1'}, {'id': '2'}], [{'key': 'b'}])
    j.commit({'key': 'b'}, [{'id': '2'}, {'id': '3'}], [])
    j.close()
    with open(tmp_path / 'journal.jsonl', 'ab') as f: f.write(b'{"key": "c", "records": [{"id": "4"')  # killed mid-write
    j2 = Journal(tmp_path)
    assert len(j2) == 2 and j2.dropped_lines == 1 and 'c' not in j2
    assert list(j2.records().id) == ['1', '2', '3']
    j2.commit({'key': 'c'}, [{'id': '4'}], [])
    j2.close()
    assert len(Journal(tmp_path)) == 3


def tree_fetch(task):
    "A task tree: each node k < 40 has children 2k+1, 2k+2; node k yields records k and k+1 (so ids overlap)."
    k = task['n']
    kids = [{'key': f'n{c}', 'n': c, 'depth': task.get('depth', 0) + 1} for c in (2 * k + 1, 2 * k + 2) if c < 40]
    return [{'id': str(k)}, {'id': str(k + 1)}], kids


def test_run_tasks_walks_the_tree_and_dedupes(tmp_path):
    j = Journal(tmp_path)
    s = run_tasks([{'key': 'n0', 'n': 0}], tree_fetch, journal=j, workers=4, progress=False)
    assert s['tasks'] == 40 and s['fetched'] == 40 and s['replayed'] == 0 and s['unique'] == 41 and s['depth'] == 5
    s2 = run_tasks([{'key': 'n0', 'n': 0}], tree_fetch, journal=j, workers=4, progress=False)
    assert s2['fetched'] == 0 and s2['replayed'] == 40


def test_run_tasks_aborts_on_a_fatal_error_keeping_finished_work(tmp_path):
    def fetch(task):
        if task['n'] == 9: raise TokenRejected('token rejected: no')
        return tree_fetch(task)
    j = Journal(tmp_path)
    with pytest.raises(TokenRejected): run_tasks([{'key': 'n0', 'n': 0}], fetch, journal=j, workers=1, progress=False)
    assert 0 < len(j) < 40
    s = run_tasks([{'key': 'n0', 'n': 0}], tree_fetch, journal=Journal(tmp_path), workers=2, progress=False)
    assert s['tasks'] == 40 and s['replayed'] == len(j) and s['fetched'] == 40 - len(j)


def _lines(path):
    try: return path.read_bytes().count(b'\n')
    except FileNotFoundError: return 0


def test_sigkill_and_resume_loses_and_duplicates_nothing(tmp_path):
    script = textwrap.dedent(f'''
        import time, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from geoloc.crawlio import Journal, run_tasks
        def fetch(task):
            time.sleep(0.03)
            k = task['n']
            kids = [{{'key': f'n{{c}}', 'n': c}} for c in (2 * k + 1, 2 * k + 2) if c < 300]
            return [{{'id': str(k)}}, {{'id': str(k + 1)}}], kids
        s = run_tasks([{{'key': 'n0', 'n': 0}}], fetch, journal=Journal(sys.argv[1]), workers=4, progress=False)
        print(s['fetched'], s['replayed'], s['unique'])
    ''')
    (tmp_path / 'crawl.py').write_text(script)
    out = tmp_path / 'out'
    journal = out / 'journal.jsonl'
    for grow in (25, 40, 60):  # killed three times, each after some more tasks have finished
        start = _lines(journal)
        p = subprocess.Popen([sys.executable, str(tmp_path / 'crawl.py'), str(out)])
        t0 = time.monotonic()
        while _lines(journal) < start + grow and time.monotonic() - t0 < 60: time.sleep(0.005)
        p.send_signal(signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL and _lines(journal) < 300  # really killed mid-crawl
    r = subprocess.run([sys.executable, str(tmp_path / 'crawl.py'), str(out)], capture_output=True, text=True, timeout=60)
    fetched_last, replayed, unique = map(int, r.stdout.split())
    assert replayed >= 125 and replayed + fetched_last == 300 and unique == 301
    j = Journal(out)
    assert len(j) == 300 and j.records().id.nunique() == 301


def test_giveup_hook_stops_retrying_a_5xx_that_will_not_heal(server):
    body = json.dumps({'error': {'message': "Please reduce the amount of data you're asking for", 'code': 1}})
    server.script['/images'] = [('err', 500, body)] * 3 + [('err', 503, 'busy'), ('ok',)]
    dense = lambda status, err: status == 500 and (err or {}).get('code') == 1
    with pytest.raises(ApiError) as e: client(server, giveup=dense).get_json('images')
    assert e.value.status == 500 and e.value.code == 1 and 'reduce the amount' in e.value.message
    server.script['/images'] = [('err', 503, 'busy'), ('ok',)]
    assert client(server, giveup=dense).get_json('images')  # other 5xx are still retried
