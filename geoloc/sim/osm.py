"""A local stand-in of OpenStreetMap's Nominatim and Overpass endpoints, for the `osm:<place>` boundary source.

It answers what osmnx asks, over a real socket on 127.0.0.1:
- Nominatim `GET /search?q=...&format=json&polygon_geojson=1...`: the answer given for that query (a list of places,
  as Nominatim writes them), `[]` for any other query, as the real service answers a place it does not know;
- Overpass `GET /api/status`: a status text (osmnx reads the free slots from it before every query);
- Overpass `POST /api/interpreter` (`data=<Overpass QL>`): the elements of an OSM JSON document that the query's
  `relation[...](poly:'lat lon ...')` statements select (tags matched, at least one node inside the polygon), with
  their ways and nodes (`(._;>;)`), in Overpass's JSON envelope.

The answers come from files recorded from the real services where public ones exist (tests/fixtures/recorded/osm,
README there). Hand-written, like the rest of `geoloc.sim`; used by `tests/test_osm.py` and lesson 00."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import shapely

__all__ = ['OSMStandIn']

_STATEMENT = re.compile(r"relation((?:\[[^\]]*\])+)\(poly:'([^']*)'\)")
_TAG = re.compile(r"\['([^']+)'(?:='([^']*)')?\]")


class OSMStandIn:
    "Nominatim and Overpass on 127.0.0.1: `nominatim_url` and `overpass_url` go into osmnx's settings."
    def __init__(self, nominatim: dict, # query text -> the JSON list Nominatim answers
                 osm: dict = None, # an Overpass JSON document ({"elements": [...]}) the interpreter selects from
                 status: str = 'Rate limit: 2\n2 slots available now.\n'): # the /api/status text
        self.nominatim, self.status = {k.strip().lower(): v for k, v in nominatim.items()}, status
        self.osm = osm or {'version': 0.6, 'generator': 'Overpass API', 'elements': []}
        self.requests, self._srv = [], None

    def start(self) -> 'OSMStandIn':
        app = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self): app._answer(self, 'GET', b'')
            def do_POST(self): app._answer(self, 'POST', self.rfile.read(int(self.headers.get('Content-Length') or 0)))
        self._srv = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self._srv.daemon_threads = True
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    @property
    def base(self) -> str: return f'http://127.0.0.1:{self._srv.server_address[1]}'
    @property
    def nominatim_url(self) -> str: return self.base + '/'
    @property
    def overpass_url(self) -> str: return self.base + '/api'

    def close(self):
        if self._srv: self._srv.shutdown(); self._srv.server_close(); self._srv = None
    def __enter__(self): return self.start()
    def __exit__(self, *a): self.close()

    def _answer(self, h, method, body):
        u = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        self.requests.append((method, u.path, q))
        if u.path == '/search': code, ctype, out = 200, 'application/json', json.dumps(self.nominatim.get(q.get('q', '').strip().lower(), []))
        elif u.path == '/api/status': code, ctype, out = 200, 'text/plain', self.status
        elif u.path == '/api/interpreter' and method == 'POST':
            code, ctype, out = 200, 'application/json', json.dumps(self.select(parse_qs(body.decode()).get('data', [''])[0]))
        else: code, ctype, out = 404, 'text/plain', 'not found'
        data = out.encode()
        h.send_response(code); h.send_header('Content-Type', ctype); h.send_header('Content-Length', str(len(data)))
        h.end_headers(); h.wfile.write(data)

    def select(self, query: str) -> dict:
        "What the interpreter answers a query: the selected relations with their ways and nodes."
        els = self.osm.get('elements', [])
        nodes = {e['id']: e for e in els if e['type'] == 'node'}
        ways = {e['id']: e for e in els if e['type'] == 'way'}
        chosen = {}
        for tags, poly in _STATEMENT.findall(query):
            want = _TAG.findall(tags)
            vals = [float(v) for v in poly.split()]
            area = shapely.Polygon(list(zip(vals[1::2], vals[0::2])))  # Overpass writes "lat lon lat lon ..."
            for r in (e for e in els if e['type'] == 'relation'):
                t = r.get('tags', {})
                if not all(k in t and (not v or t[k] == v) for k, v in want): continue
                ids = [n for m in r.get('members', []) if m['type'] == 'way' and m['ref'] in ways for n in ways[m['ref']]['nodes']]
                pts = [nodes[i] for i in ids if i in nodes]
                if pts and shapely.contains_xy(area, [p['lon'] for p in pts], [p['lat'] for p in pts]).any(): chosen[r['id']] = r
        out_ways = {m['ref']: ways[m['ref']] for r in chosen.values() for m in r['members'] if m['type'] == 'way' and m['ref'] in ways}
        out_nodes = {i: nodes[i] for w in out_ways.values() for i in w['nodes'] if i in nodes}
        return {k: v for k, v in self.osm.items() if k != 'elements'} | {
            'elements': [*out_nodes.values(), *out_ways.values(), *chosen.values()]}
