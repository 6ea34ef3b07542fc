"""HTTP plumbing shared by both stand-ins: responses, a threading server that can end its keep-alive connections,
and the request pipeline (routing, faults, counters, the request log, one write per response).

Used by `geoloc.sim.mapillary` and `geoloc.sim.flickr`; not a public API."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .world import SECRET_PARAMS, h64, u01

__all__ = ['Resp', 'json_resp', 'graph_error_resp', 'text_resp', 'Handler', 'Server', 'Service']

# ------------------------------------------------------------------------------------------------ HTTP plumbing
class Resp:
    "An HTTP response to write (or a dropped connection when `drop`)."
    def __init__(self, status=200, body=b'', ctype='application/json; charset=utf-8', headers=None, drop=False):
        self.status, self.body, self.ctype, self.headers, self.drop = status, body, ctype, dict(headers or {}), drop

def json_resp(status, obj, headers=None) -> Resp:
    return Resp(status, json.dumps(obj, ensure_ascii=False, separators=(',', ':')).encode(), headers=headers)

def graph_error_resp(status, message, code, type_='MLYApiException', subcode=None, headers=None,
                     transient=False) -> Resp:
    err = {'message': message, 'type': type_, 'code': code}
    if transient: err['is_transient'] = True
    if subcode is not None: err['error_subcode'] = subcode
    err['fbtrace_id'] = 'A' + hashlib.sha1(f'{message}{time.time_ns()}'.encode()).hexdigest()[:22]
    return json_resp(status, {'error': err}, headers)

def text_resp(status, text, ctype='text/plain; charset=utf-8', headers=None) -> Resp:
    return Resp(status, text.encode(), ctype, headers)


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'geoloc-emulator/1'
    timeout = 120  # idle keep-alive connections end after this
    disable_nagle_algorithm = True  # small responses must not wait for the client's delayed ACK (40 ms)
    def log_message(self, *args): pass
    def do_GET(self): self.server.app.handle(self, 'GET')
    def do_POST(self): self.server.app.handle(self, 'POST')
    def do_HEAD(self): self.server.app.handle(self, 'HEAD')


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    def __init__(self, addr, app):
        super().__init__(addr, Handler)
        self.app, self._conns, self._clock = app, set(), threading.Lock()
    def process_request(self, request, client_address):
        with self._clock: self._conns.add(request)
        super().process_request(request, client_address)
    def shutdown_request(self, request):
        with self._clock: self._conns.discard(request)
        super().shutdown_request(request)
    def close_connections(self):
        "End every open keep-alive connection (their threads then finish)."
        with self._clock: conns = list(self._conns)
        for c in conns:
            try: c.shutdown(socket.SHUT_RDWR)
            except OSError: pass


class Service:
    "Shared request pipeline of both services: routing, faults, counters, log, writing."
    name = ''
    def __init__(self, emu: 'Emulator'): self.emu, self.world = emu, emu.world

    def handle(self, h: Handler, method: str):
        t0 = time.perf_counter()
        url = urlsplit(h.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if method == 'POST':
            n = int(h.headers.get('Content-Length') or 0)
            params.update(parse_qsl(h.rfile.read(n).decode('utf-8', 'replace'), keep_blank_values=True))
        path = url.path
        if path.startswith('/_emulator/'): return self._write(h, self.emu.admin(path, params), method)
        endpoint, image = self.route(path, params)
        key = f'{self.name}:{path}?' + '&'.join(f'{k}={v}' for k, v in sorted(params.items())
                                               if k not in SECRET_PARAMS and k not in ('sig', 'exp'))
        emu, F = self.emu, self.emu.faults
        attempt = emu.attempt(key)
        delay = F.latency + (F.jitter * u01(F.seed, 'jitter', key, attempt) if F.jitter else 0)
        if delay > 0: time.sleep(delay)
        fault = next((k for k in ('p_drop', 'p429', 'p403_throttle', 'p5xx', 'p_unavailable', 'p_search_unavailable')
                      if F.roll(k, key, attempt) and self.has_fault(k)), None)
        if fault == 'p_drop': resp = Resp(drop=True)
        elif fault == 'p429': resp = self.throttled()
        elif fault == 'p5xx': resp = self.server_error(h64(F.seed, '5xx', key, attempt))
        elif fault == 'p_unavailable': resp = self.unavailable(params)
        elif fault == 'p403_throttle': resp = self.throttled(status=403)
        elif fault == 'p_search_unavailable': resp = self.search_unavailable()
        else:
            try: resp = self.respond(endpoint, path, params, h, key, attempt)
            except Exception as e:  # a bug here must still answer like a server, and be visible in the log
                resp = self.server_error(0); resp.headers['X-Emulator-Error'] = f'{type(e).__name__}: {e}'[:200]
                emu.count('errors', 1)
            if resp.status == 200 and not resp.drop:
                if image: fault = self.image_fault(resp, key, attempt)
                elif F.roll('p_malformed', key, attempt):
                    fault = 'p_malformed'
                    b = resp.body
                    resp.body = b[:max(1, len(b) // 2)] if u01(F.seed, 'mal', key, attempt) < 0.5 else \
                        b'<!DOCTYPE html><html><body><h1>Bad Gateway</h1></body></html>'
        # counted before the client can see the answer, so that stats() right after a response includes it
        emu.record(self.name, endpoint, path, params, 0 if resp.drop else resp.status,
                    (time.perf_counter() - t0) * 1000, 0 if resp.drop else len(resp.body), fault)
        if resp.drop: h.close_connection = True
        else: self._write(h, resp, method)

    def has_fault(self, kind) -> bool:
        "Whether this service has the fault `kind` (the ones named for one service only apply to it)."
        return kind not in self.only_for or self.only_for[kind] == self.name
    only_for = {'p403_throttle': 'mapillary', 'p_search_unavailable': 'flickr'}

    def image_fault(self, resp, key, attempt):
        F = self.emu.faults
        if F.roll('p_truncated_jpeg', key, attempt):
            resp.body = resp.body[:max(64, len(resp.body) // 3)]
            return 'p_truncated_jpeg'
        if F.roll('p_corrupt_jpeg', key, attempt):
            b = bytearray(resp.body)
            b[:64] = hashlib.sha512(bytes(b[:64])).digest()  # no SOI marker, no JFIF header: not decodable
            resp.body = bytes(b)
            return 'p_corrupt_jpeg'
        return None

    def _write(self, h, resp: Resp, method='GET'):
        try:
            h.send_response(resp.status)
            h.send_header('Content-Type', resp.ctype)
            h.send_header('Content-Length', str(len(resp.body)))
            for k, v in resp.headers.items(): h.send_header(k, str(v))
            h._headers_buffer.append(b'\r\n')
            if method != 'HEAD': h._headers_buffer.append(resp.body)  # headers and body in one write
            h.flush_headers()
        except (BrokenPipeError, ConnectionResetError): h.close_connection = True
