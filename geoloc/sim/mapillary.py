"""The Mapillary Graph API v4 stand-in: bbox search (capped at 2000, time windows, filters), entity lookups and
signed, expiring thumbnail URLs, with the Graph error shape.

Served by `geoloc.sim.emulator.Emulator` at `mapillary_url`; crawled by `geoloc.mapillary` and `geoloc.images`."""
from __future__ import annotations

import hmac
import json
import math
import time
from datetime import datetime, timezone

import numpy as np

from .server import Resp, Service, graph_error_resp, text_resp
from .world import MLY_FIELDS, MLY_THUMBS, u01

__all__ = ['MapillaryService', 'iso_ms']

class MapillaryService(Service):
    name = 'mapillary'

    def route(self, path, params):
        if path.startswith('/cdn/'): return 'thumb', True
        if path.rstrip('/') in ('/images', '/v4/images'): return 'search', False
        return 'entity', False

    def throttled(self, status=429):
        "The Graph API's rate-limit answer: code 4, is_transient; as 429 (Retry-After) or, as the real API also does, 403."
        ra = self.emu.faults.retry_after
        r = graph_error_resp(status, 'Application request limit reached', 4, type_='OAuthException', transient=True,
                             headers={'Retry-After': ra} if status == 429 else None)
        return r

    def server_error(self, h):
        status = (500, 502, 503, 504)[h % 4]
        if status == 500: return graph_error_resp(500, 'An unknown error has occurred.', 1, type_='OAuthException')
        return text_resp(status, f'<html><body><h1>{status}</h1>Server error</body></html>', 'text/html; charset=utf-8')

    def unavailable(self, params):
        return graph_error_resp(500, 'Service temporarily unavailable', 2, type_='OAuthException')

    def respond(self, endpoint, path, params, h, key, attempt):
        if endpoint == 'thumb': return self.thumb(path, params)
        auth = h.headers.get('Authorization') or ''
        token = params.get('access_token')
        if auth:
            scheme, _, tok = auth.partition(' ')
            token = tok.strip() if scheme.lower() in ('oauth', 'bearer') else ''
        if token is None:
            return graph_error_resp(401, 'An access token is required to request this resource.', 104, 'OAuthException')
        if not hmac.compare_digest(token.encode(), self.emu.mapillary_token.encode()):
            if self.emu.faults.token_as_500:  # the real API sometimes answers a bad token with a 500
                return graph_error_resp(500, 'Error validating access token: Session has expired.', 190,
                                        'OAuthException', subcode=463)
            return graph_error_resp(401, 'Invalid OAuth access token - Cannot parse access token', 190, 'OAuthException')
        fields = [f.strip() for f in (params.get('fields') or 'id').split(',') if f.strip()] or ['id']
        bad = [f for f in fields if f not in MLY_FIELDS]
        if bad:
            return graph_error_resp(400, f'Tried accessing nonexisting field ({bad[0]}) on node type (Image)', 100)
        base = f"http://{h.headers.get('Host') or self.emu.hosts['mapillary']}"
        if endpoint == 'entity':
            iid = path.strip('/').split('/')[-1]
            try: r = self.world.row('mapillary', iid)
            except KeyError:
                return graph_error_resp(400, f"Unsupported get request. Object with ID '{iid}' does not exist, cannot be "
                                    "loaded due to missing permissions, or does not support this operation", 100,
                                    subcode=33)
            return Resp(200, self.rows_json(np.array([r]), fields, base)[1:-1].encode())
        return self.search(params, fields, base)

    def search(self, params, fields, base):
        emu = self.emu
        if 'image_ids' in params and 'bbox' not in params:
            rows = []
            for i in params['image_ids'].split(','):
                try: rows.append(self.world.row('mapillary', i.strip()))
                except KeyError: pass
            return Resp(200, ('{"data":' + self.rows_json(np.array(rows, np.int64), fields, base) + '}').encode())
        if 'bbox' not in params:
            return graph_error_resp(400, 'Invalid parameter: a bbox (minLon,minLat,maxLon,maxLat) or image_ids is '
                                'required', 100)
        try:
            x0, y0, x1, y1 = (float(v) for v in params['bbox'].split(','))
            ok = all(map(math.isfinite, (x0, y0, x1, y1)))
        except ValueError: ok = False
        if not ok or not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
            return graph_error_resp(400, f"Invalid parameter bbox={params['bbox']!r}: expected minLon,minLat,maxLon,"
                                "maxLat with min <= max", 100)
        area = (x1 - x0) * (y1 - y0)
        if area > emu.max_bbox_area * (1 + 1e-9):  # float noise of a box exactly at the limit is allowed
            return graph_error_resp(400, f'Invalid parameter bbox: area {area:.4g} square degrees is over the limit of '
                                f'{emu.max_bbox_area:g}', 100)
        lim = params.get('limit', '2000')
        try: limit = int(lim)
        except ValueError: limit = -1
        if limit < 1: return graph_error_resp(400, f'Invalid parameter limit={lim!r}: a positive integer', 100)
        limit = min(limit, 2000)  # the documented maximum (and default); more is capped, not refused
        idx = self.world.mly_search((x0, y0, x1, y1))
        m = self.world.mly_arrays()
        if 'start_captured_at' in params or 'end_captured_at' in params:
            try:
                t0 = iso_ms(params.get('start_captured_at'), -2**62); t1 = iso_ms(params.get('end_captured_at'), 2**62)
            except ValueError:
                return graph_error_resp(400, 'Invalid parameter start_captured_at/end_captured_at: ISO 8601 expected', 100)
            idx = idx[(m['captured_at'][idx] >= t0) & (m['captured_at'][idx] <= t1)]
        if 'is_pano' in params: idx = idx[m['is_pano'][idx] == (params['is_pano'].lower() == 'true')]
        if 'creator_username' in params: idx = idx[m['creator'][idx] == params['creator_username']]
        F = emu.faults
        if F.dense_above and len(idx) > F.dense_above: return self.dense(F)
        rank = m['rank'][idx]
        more = len(idx) > limit
        cap = max(1, int(F.short_full * limit)) if F.short_full and more else limit  # "full" with fewer rows
        if len(idx) > cap:
            top = np.argpartition(rank, cap - 1)[:cap]
            idx, rank = idx[top], rank[top]
        idx = idx[np.argsort(rank, kind='stable')]
        cut = F.short_full and more and len(idx) < min(limit, len(m['rank']))
        with_next = cut and u01(F.seed, 'paging', params.get('bbox', '')) < 0.5  # some short answers say so, not all
        paging = ',"paging":{"next":"' + base + '/images?after=' + str(len(idx)) + '"}' if with_next else ''
        return Resp(200, ('{"data":' + self.rows_json(idx, fields, base) + paging + '}').encode())

    def dense(self, F):
        "A box too dense to answer, in the shapes the real API uses (`Faults.dense_kind`)."
        reduce = "Please reduce the amount of data you're asking for, then retry your request"
        if F.dense_kind == 'user_msg':
            r = graph_error_resp(500, 'An unknown error occurred', 1, type_='OAuthException', subcode=99, transient=True)
            err = json.loads(r.body)
            err['error'].update(error_user_title='Query too large', error_user_msg=reduce)
            return Resp(500, json.dumps(err).encode(), r.ctype)
        if F.dense_kind == '504':
            return text_resp(504, '<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway '
                                  'Time-out</h1></center></body></html>', 'text/html')
        if F.dense_kind == 'slow':
            time.sleep(F.dense_sleep)  # the client gives up reading first
            return graph_error_resp(500, reduce, 1, type_='OAuthException', transient=True)
        return graph_error_resp(500, reduce, 1, type_='OAuthException', transient=True)

    def rows(self, idx, fields, base) -> list:
        "The JSON objects of images `idx` with `fields` (the Graph projection)."
        return json.loads(self.rows_json(idx, fields, base))

    def rows_json(self, idx, fields, base) -> str:
        "The JSON array of images `idx` with `fields`, assembled from per-image fragments (fast for 2000 rows)."
        if len(idx) == 0: return '[]'
        acc = None
        for f in fields:
            if f in MLY_THUMBS:
                exp = int((time.time() + self.emu.thumb_ttl) * 1000)
                size = MLY_THUMBS[f]
                ids = self.world.mly_arrays()['id'][idx].tolist()
                v = np.array([f'"{f}":"{base}/cdn/mly/{i}/{size}.jpg?exp={exp}&sig={self.emu.sign(i, size, exp)}"'
                              for i in ids], dtype=object)
            else: v = self.world.mly_fragments(f)[idx]
            acc = v if acc is None else acc + ',' + v
        return '[{' + '},{'.join(acc.tolist()) + '}]'

    def thumb(self, path, params):
        parts = path.strip('/').split('/')  # cdn/mly/{id}/{size}.jpg
        if len(parts) != 4 or parts[1] != 'mly': return text_resp(404, 'Not Found')
        iid, size = parts[2], parts[3].removesuffix('.jpg')
        try: exp = int(params.get('exp', ''))
        except ValueError: exp = -1
        want = self.emu.sign(iid, size, exp)
        if exp < 0 or not hmac.compare_digest(want, params.get('sig', '')) or size not in MLY_THUMBS.values():
            return text_resp(403, 'Bad signature')
        if time.time() * 1000 > exp: return text_resp(403, 'URL signature expired')
        try: self.world.row('mapillary', iid)
        except KeyError: return text_resp(404, 'Not Found')
        if self.emu.gone('mapillary', iid): return text_resp(404, 'Not Found')
        data = self.world.render('mapillary', iid, 'original' if size == 'original' else int(size))
        return Resp(200, data, 'image/jpeg', {'Cache-Control': 'max-age=1209600'})


def iso_ms(s, default) -> int:
    "ISO 8601 (or ms since epoch) -> ms since epoch."
    if s is None or s == '': return default
    if s.lstrip('-').isdigit(): return int(s)
    d = datetime.fromisoformat(s.replace('Z', '+00:00'))
    if d.tzinfo is None: d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp() * 1000)
