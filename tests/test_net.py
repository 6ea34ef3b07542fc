"""geoloc.net against hostile servers on 127.0.0.1 (real sockets): deadlines whatever the server does, size caps
(decompression bombs too), redirects only to http(s), refused connections said as such, and secrets that never reach
a message or a log line."""
import gzip
import io
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3

from geoloc.net import (USER_AGENT, BadURL, ConnectionRefused, Timeout, TooLarge, check_api_url, check_secret, redact,
                        session)

SECRET = 'MLY|1234567|deadbeefcafebabe0123456789'


class Hostile(BaseHTTPRequestHandler):
    "Routes: /ok, /trickle, /slowheaders, /big, /bomb, /file, /loop/N, /ua."
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def _send(self, status, body=b'', headers=()):
        self.send_response(status)
        for k, v in headers: self.send_header(k, v)
        if not any(k.lower() == 'content-length' for k, _ in headers): self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if body: self.wfile.write(body)
    def do_GET(self):
        p = self.path
        if p.startswith('/ok'): return self._send(200, b'{"ok": true}')
        if p.startswith('/ua'): return self._send(200, self.headers.get('User-Agent', '').encode())
        if p.startswith('/trickle'):   # a byte every 0.3 s: every read is quick, the whole never ends
            self.send_response(200); self.send_header('Content-Length', '1000'); self.end_headers()
            try:
                for _ in range(1000): self.wfile.write(b'x'); self.wfile.flush(); time.sleep(0.3)
            except OSError: pass
            return
        if p.startswith('/slowheaders'):
            try:
                self.wfile.write(b'HTTP/1.1 200 OK\r\n')
                for i in range(100): self.wfile.write(f'X-{i}: y\r\n'.encode()); self.wfile.flush(); time.sleep(0.3)
            except OSError: pass
            return
        if p.startswith('/big'):       # a declared 400 MB body
            self.send_response(200); self.send_header('Content-Length', str(400_000_000)); self.end_headers()
            try: self.wfile.write(b'\0' * 65536)
            except OSError: pass
            return
        if p.startswith('/bomb'):      # 60 kB on the wire, 60 MB once decoded, no honest length of the decoded body
            body = gzip.compress(b'\0' * 60_000_000, 9)
            return self._send(200, body, [('Content-Encoding', 'gzip')])
        if p.startswith('/file'): return self._send(302, headers=[('Location', 'file:///etc/passwd')])
        if p.startswith('/loop/'):
            n = int(p.rsplit('/', 1)[1])
            return self._send(302, headers=[('Location', f'/loop/{n + 1}')])
        self._send(404, b'no')


@pytest.fixture(scope='module')
def server():
    srv = ThreadingHTTPServer(('127.0.0.1', 0), Hostile)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}'
    srv.shutdown(); srv.server_close()


def test_one_user_agent_naming_geoloc(server):
    r = session().get(f'{server}/ua')
    assert r.body.decode() == USER_AGENT and USER_AGENT.startswith('geoloc/')


@pytest.mark.parametrize('path', ['/trickle', '/slowheaders'])
def test_the_deadline_holds_whatever_the_server_trickles(server, path):
    "Each read is quicker than the timeout, yet the fetch ends at the overall deadline, in the body or the headers."
    s = session(timeout=5, deadline=1.5, retries=0)
    t = time.perf_counter()
    with pytest.raises(Timeout, match='deadline'): s.get(server + path)
    assert time.perf_counter() - t < 4


def test_size_caps_refuse_big_bodies_and_decompression_bombs(server):
    s = session(max_bytes=5_000_000, retries=0)
    with pytest.raises(TooLarge, match='400,000,000 bytes'): s.get(f'{server}/big')
    t = time.perf_counter()
    with pytest.raises(TooLarge, match='over the 5,000,000-byte cap'): s.get(f'{server}/bomb')
    assert time.perf_counter() - t < 5
    assert len(session(max_bytes=70_000_000).get(f'{server}/bomb').body) == 60_000_000   # under a larger cap: whole


def test_redirects_stay_on_http_and_end(server):
    s = session(retries=0)
    with pytest.raises(BadURL): s.get(f'{server}/file')
    with pytest.raises(BadURL, match='more than 5 redirects'): s.get(f'{server}/loop/0')
    with pytest.raises(BadURL): s.get('file:///etc/passwd')


def test_connection_refused_is_not_a_timeout():
    with socket.socket() as sock:   # a port nothing listens on
        sock.bind(('127.0.0.1', 0)); port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefused, match='connection refused'):
        session(retries=1, backoff=0).get(f'http://127.0.0.1:{port}/x')


def test_redact_covers_keys_tokens_signatures_and_passwords():
    u = (f'https://graph.mapillary.com/images?access_token={SECRET}&bbox=1,2,3,4&api_key=abc123def&'
         f'sig=0f0f0f0f&X-Amz-Signature=aaaa')
    r = redact(u)
    assert SECRET not in r and 'abc123def' not in r and '0f0f0f0f' not in r and 'aaaa' not in r and 'bbox=1,2,3,4' in r
    assert redact(f'Authorization: OAuth {SECRET}') == 'Authorization: OAuth ***'
    assert redact('https://alice:hunter22@example.org/x') == 'https://***@example.org/x'
    assert redact(f'token {SECRET} here', [SECRET]) == 'token *** here'


def test_debug_logging_never_prints_a_key(server, caplog):
    "urllib3's DEBUG lines show whole URLs: the filter installed by geoloc.net redacts them."
    with caplog.at_level(logging.DEBUG, logger='urllib3'):
        session().get(f'{server}/ok', {'api_key': 'flickrkey1234567', 'text': 'x'})
    text = '\n'.join(r.getMessage() for r in caplog.records)
    assert 'connectionpool' in ' '.join(r.name for r in caplog.records) and 'flickrkey1234567' not in text
    assert 'api_key=***' in text


def test_a_secret_with_a_control_character_is_refused_unquoted(capsys):
    for bad in (SECRET + '\nX-Injected: 1', 'abc\x00def', 'abc\x7fdef'):
        with pytest.raises(ValueError) as e: check_secret(bad, 'MAPILLARY_TOKEN')
        assert 'MAPILLARY_TOKEN' in str(e.value) and bad not in str(e.value) and 'abc' not in str(e.value)
    assert check_secret(f'  {SECRET}\n', 'x') == SECRET   # a trailing newline from a file is just stripped
    from geoloc.mapillary import crawl_images
    import shapely
    with pytest.raises(ValueError) as e:   # refused before any request: the URL points nowhere
        crawl_images(shapely.box(0, 0, 0.01, 0.01), 'MLY|1|x\r\ny', base_url='http://127.0.0.1:9', progress=False)
    assert 'control character' in str(e.value) and 'x\r\ny' not in str(e.value) + capsys.readouterr().err


def test_a_token_inside_the_api_url_is_refused():
    for u in (f'https://graph.mapillary.com/?access_token={SECRET}', 'https://u:p@api.flickr.com/services/rest',
              'https://api.flickr.com/services/rest?api_key=abcdef123456'):
        with pytest.raises(ValueError, match='carries a token') as e: check_api_url(u)
        assert SECRET not in str(e.value) and 'abcdef123456' not in str(e.value)
    with pytest.raises(ValueError, match='not an http'): check_api_url('ftp://x')
    assert check_api_url('http://127.0.0.1:8765/') == 'http://127.0.0.1:8765'


def test_every_http_user_goes_through_net():
    "No module but geoloc.net opens HTTP connections itself (requests, urllib, http.client, urllib3 pools)."
    import ast
    from pathlib import Path
    pkg = Path(__file__).resolve().parents[1] / 'geoloc'
    bad = []
    for p in pkg.rglob('*.py'):
        rel = p.relative_to(pkg).as_posix()
        if rel in ('net.py', '_modidx.py') or rel.startswith('sim/'): continue   # the stand-ins are servers
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            bad += [f'{rel}:{node.lineno} {n}' for n in names
                    if n.split('.')[0] in ('requests', 'http', 'urllib3') or n in ('urllib.request',)]
    assert not bad, bad
