"""The Flickr REST stand-in: flickr.photos.search (text, tags, bbox, dates, geo filters, sorts, the 4000 cap, the
12-hour rule of unlimited geo queries, numbers as strings), getSizes, test.echo, static photo URLs; JSON or XML.

Served by `geoloc.sim.emulator.Emulator` at `flickr_url`; crawled by `geoloc.flickr` in the lessons and tests."""
from __future__ import annotations

import hmac
import json
import math
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from xml.sax.saxutils import quoteattr

import numpy as np

from .server import json_resp, Resp, Service, text_resp
from .world import FLICKR_SIZES, SECRET_PARAMS, SUFFIX_SIZE, clean_tag, fold, u01

__all__ = ['FlickrService', 'FlickrFail', 'to_xml']

_FLICKR_METHODS = ('flickr.photos.search', 'flickr.photos.getSizes', 'flickr.test.echo')
_SORTS = ('date-posted-desc', 'date-posted-asc', 'date-taken-desc', 'date-taken-asc', 'interestingness-desc',
          'interestingness-asc', 'relevance')


class FlickrFail(Exception):
    def __init__(self, code, message): super().__init__(message); self.code, self.message = code, message


class FlickrService(Service):
    name = 'flickr'

    def __init__(self, emu):
        super().__init__(emu)
        df = self.world.flickr
        self.a = dict(lon=df['lon'].to_numpy(float), lat=df['lat'].to_numpy(float), geo=df['lat'].notna().to_numpy(),
                      up=df['uploaded'].to_numpy(np.int64), taken=df['taken'].to_numpy(np.int64),
                      acc=df['accuracy'].to_numpy(int), ctx=df['geo_context'].to_numpy(int),
                      lic=df['license'].to_numpy(int), interest=df['interestingness'].to_numpy(float),
                      idn=df['id'].astype(np.int64).to_numpy(), owner=df['owner'].to_numpy(object))
        self.tags_pad = (' ' + df['tags'].map(fold) + ' ').to_numpy(object)
        self.hay = (df['title'].map(fold) + ' ' + df['tags'].map(fold)).to_numpy(object)
        self._qcache, self._qlock = OrderedDict(), threading.Lock()

    def route(self, path, params):
        if path.startswith('/static/'): return 'static', True
        if path.rstrip('/') == '/services/rest':
            return {'flickr.photos.search': 'search', 'flickr.photos.getSizes': 'getSizes'}.get(
                params.get('method'), 'rest'), False
        return 'unknown', False

    def throttled(self):
        return text_resp(429, 'Too Many Requests', headers={'Retry-After': self.emu.faults.retry_after})

    def server_error(self, h):
        status = (500, 502, 503, 504)[h % 4]
        return text_resp(status, f'<html><body><h1>{status}</h1>Flickr is having a massage.</body></html>',
                     'text/html; charset=utf-8')

    def unavailable(self, params):
        return self.fail_resp(params, 105, 'Service currently unavailable')

    def search_unavailable(self):
        "flickr.photos.search's temporary outage: `stat: fail` code 10 at HTTP 200 (JSON: what the crawlers ask for)."
        return json_resp(200, {'stat': 'fail', 'code': 10, 'message': 'Sorry, the Flickr search API is not currently available.'})

    # -------------------------------------------------------------------------------------------- responses
    def fmt(self, params, obj, stat_ok=True) -> Resp:
        "Serialise as Flickr does: JSON (JSONP unless nojsoncallback=1), or REST XML by default."
        f = params.get('format', 'rest')
        if f == 'json':
            body = json.dumps(obj, ensure_ascii=False, separators=(',', ':'))
            if params.get('nojsoncallback') != '1':
                body = f"{params.get('jsoncallback') or 'jsonFlickrApi'}({body})"
            return Resp(200, body.encode(), 'application/json; charset=utf-8')
        return Resp(200, to_xml(obj).encode(), 'text/xml; charset=utf-8')

    def fail_resp(self, params, code, message) -> Resp:
        return self.fmt(params, {'stat': 'fail', 'code': code, 'message': message})

    def respond(self, endpoint, path, params, h, key, attempt):
        if endpoint == 'static': return self.static(path)
        if endpoint == 'unknown': return text_resp(404, 'Not Found', 'text/html; charset=utf-8')
        f = params.get('format', 'rest')
        if f not in ('json', 'rest'):
            return self.fmt({'format': 'rest'}, {'stat': 'fail', 'code': 111, 'message': f'Format "{f}" not found'})
        key_ = params.get('api_key', '')
        if not key_ or not all(c in '0123456789abcdef' for c in key_.lower()) or len(key_) != 32:
            return self.fail_resp(params, 100, 'Invalid API Key (Key has invalid format)')
        if not hmac.compare_digest(key_.encode(), self.emu.flickr_key.encode()):
            return self.fail_resp(params, 100, 'Invalid API Key (Key not found)')
        method = params.get('method', '')
        if method not in _FLICKR_METHODS: return self.fail_resp(params, 112, f'Method "{method}" not found')
        try:
            if method == 'flickr.test.echo':
                return self.fmt(params, {**{k: {'_content': v} for k, v in params.items() if k not in SECRET_PARAMS},
                                         'stat': 'ok'})
            if method == 'flickr.photos.getSizes': return self.fmt(params, self.get_sizes(params, h))
            return self.fmt(params, self.search(params, h, key, attempt))
        except FlickrFail as e:
            return self.fail_resp(params, e.code, e.message)

    def base(self, h): return f"http://{h.headers.get('Host') or self.emu.hosts['flickr']}"

    def static(self, path):
        parts = path.strip('/').split('/')  # static/{server}/{id}_{secret}[_{suffix}].jpg
        if len(parts) != 3 or not parts[2].endswith('.jpg'): return text_resp(404, 'Not Found')
        name = parts[2][:-4].split('_')
        if len(name) not in (2, 3): return text_resp(404, 'Not Found')
        iid, secret, suffix = name[0], name[1], ('_' + name[2]) if len(name) == 3 else ''
        if suffix not in SUFFIX_SIZE: return text_resp(404, 'Not Found')
        try: r = self.world.row('flickr', iid)
        except KeyError: return text_resp(404, 'Not Found')
        df = self.world.flickr
        want = df['o_secret'].iat[r] if suffix == '_o' else df['secret'].iat[r]
        if secret != want or parts[1] != df['server'].iat[r] or (suffix == '_o' and not df['can_download'].iat[r]):
            return text_resp(404, 'Not Found')
        if self.emu.gone('flickr', iid): return text_resp(404, 'Not Found')
        size = SUFFIX_SIZE[suffix]
        data = self.world.render('flickr', iid, 'original' if size is None else size)
        return Resp(200, data, 'image/jpeg', {'Cache-Control': 'max-age=31536000'})

    def url(self, base, r, extra):
        df = self.world.flickr
        suffix, size = FLICKR_SIZES[extra]
        secret = df['o_secret'].iat[r] if suffix == '_o' else df['secret'].iat[r]
        return f"{base}/static/{df['server'].iat[r]}/{df['id'].iat[r]}_{secret}{suffix}.jpg"

    def get_sizes(self, params, h):
        try: r = self.world.row('flickr', params.get('photo_id', ''))
        except KeyError: raise FlickrFail(1, 'Photo not found') from None
        base, iid, out = self.base(h), params.get('photo_id'), []
        for extra, (suffix, size) in FLICKR_SIZES.items():
            if suffix == '_o' and not self.world.flickr['can_download'].iat[r]: continue
            w, hh = self.world.image_size('flickr', iid, 'original' if size is None else size)
            out.append({'label': extra[4:], 'width': w, 'height': hh, 'source': self.url(base, r, extra),
                        'media': 'photo'})
        return {'sizes': {'canblog': 0, 'canprint': 0, 'candownload': 1, 'size': out}, 'stat': 'ok'}

    def query(self, params) -> tuple[np.ndarray, bool]:
        "Rows matching a search, in the requested order; and whether it is a geo query (250 per page)."
        a, now = self.a, self.world.now
        text = params.get('text', '').strip()
        tags = [t for t in (fold(clean_tag(t)) for t in params.get('tags', '').split(',')) if t]
        dates = {k: params.get(k, '').strip() for k in ('min_upload_date', 'max_upload_date', 'min_taken_date',
                                                        'max_taken_date')}
        user = params.get('user_id', '').strip()
        geo_q = bool(params.get('bbox')) or params.get('has_geo') in ('1', 'true') or bool(params.get('lat'))
        limiting = bool(text or tags or user or any(dates.values()))
        if not (limiting or geo_q):
            raise FlickrFail(3, 'Parameterless searches have been disabled. Please use flickr.photos.getRecent '
                                 'instead.')
        m = np.ones(len(a['up']), bool)
        if params.get('bbox'):
            try:
                x0, y0, x1, y1 = (float(v) for v in params['bbox'].split(','))
                ok = all(map(math.isfinite, (x0, y0, x1, y1))) and x0 < x1 and y0 < y1
            except ValueError: ok = False
            if not ok or not (-180 <= x0 and x1 <= 180 and -90 <= y0 and y1 <= 90):
                raise FlickrFail(18, 'Illogical arguments')
            with np.errstate(invalid='ignore'):
                m &= a['geo'] & (a['lon'] >= x0) & (a['lon'] <= x1) & (a['lat'] >= y0) & (a['lat'] <= y1)
        if params.get('lat') or params.get('lon'):
            try:
                la, lo_ = float(params['lat']), float(params['lon'])
                rad = float(params.get('radius') or 5) * (1.609344 if params.get('radius_units') == 'mi' else 1)
            except (KeyError, ValueError): raise FlickrFail(18, 'Illogical arguments') from None
            if not (-90 <= la <= 90 and -180 <= lo_ <= 180) or rad <= 0: raise FlickrFail(18, 'Illogical arguments')
            rad = min(rad, 32.0)  # Flickr's maximum radius, km
            with np.errstate(invalid='ignore'):
                dkm = np.hypot((a['lon'] - lo_) * 111.32 * math.cos(math.radians(la)), (a['lat'] - la) * 110.54)
                m &= a['geo'] & (dkm <= rad)
        if params.get('has_geo') in ('1', 'true'): m &= a['geo']
        elif params.get('has_geo') in ('0', 'false'): m &= ~a['geo']
        lo = {}
        for k, v in dates.items():
            if not v: continue
            try: lo[k] = int(float(v)) if v.replace('.', '').isdigit() else \
                int(datetime.fromisoformat(v).replace(tzinfo=timezone.utc).timestamp())
            except ValueError: raise FlickrFail(18, 'Illogical arguments') from None
        if 'min_upload_date' in lo: m &= a['up'] >= lo['min_upload_date']
        if 'max_upload_date' in lo: m &= a['up'] <= lo['max_upload_date']
        if 'min_taken_date' in lo: m &= a['taken'] >= lo['min_taken_date']
        if 'max_taken_date' in lo: m &= a['taken'] <= lo['max_taken_date']
        if lo.get('min_upload_date', -1) > lo.get('max_upload_date', 2**62) or \
           lo.get('min_taken_date', -1) > lo.get('max_taken_date', 2**62):
            raise FlickrFail(18, 'Illogical arguments')
        if geo_q and not limiting: m &= a['up'] >= now - 12 * 3600  # no limiting agent: only the last 12 hours
        if params.get('geo_context') in ('0', '1', '2'): m &= a['ctx'] == int(params['geo_context'])
        acc = params.get('accuracy', '')
        if acc.isdigit() and 1 <= int(acc) <= 16: m &= a['acc'] >= int(acc)
        if params.get('license', '').strip():
            try: lic = [int(v) for v in params['license'].split(',') if v.strip()]
            except ValueError: raise FlickrFail(18, 'Illogical arguments') from None
            m &= np.isin(a['lic'], lic)
        if user: m &= a['owner'] == user
        idx = np.flatnonzero(m)
        if tags:
            pad = self.tags_pad[idx]
            hits = np.array([[f' {t} ' in s for s in pad] for t in tags]).reshape(len(tags), len(idx))
            idx = idx[hits.all(0) if params.get('tag_mode') == 'all' else hits.any(0)]
        score = None
        if text:
            words = fold(text).split()
            hay = self.hay[idx]
            hit = np.array([[w in s for s in hay] for w in words]).reshape(len(words), len(idx))
            idx, score = idx[hit.all(0)], hit.sum(0)[hit.all(0)]
        sort = params.get('sort', 'date-posted-desc')
        if sort not in _SORTS: sort = 'date-posted-desc'
        if sort == 'relevance':
            keyv = -(a['interest'][idx] * (1 + (score if score is not None else 0)))
        else:
            col = {'date-posted': a['up'], 'date-taken': a['taken'], 'interestingness': a['interest']}[sort.rsplit('-', 1)[0]]
            keyv = col[idx] * (-1 if sort.endswith('desc') else 1)
        order = np.lexsort((-a['idn'][idx], keyv))
        return idx[order], geo_q

    def search(self, params, h, key, attempt):
        qkey = tuple(sorted((k, v) for k, v in params.items()
                            if k not in SECRET_PARAMS + ('page', 'per_page', 'extras', 'format', 'nojsoncallback',
                                                    'jsoncallback', 'method')))
        with self._qlock: hit = self._qcache.get(qkey)
        if hit is None:
            hit = self.query(params)
            with self._qlock:
                self._qcache[qkey] = hit
                while len(self._qcache) > 512: self._qcache.popitem(last=False)
        idx, geo_q = hit
        try: per_page = int(params.get('per_page', 100))
        except ValueError: per_page = 100
        per_page = max(1, min(per_page if per_page > 0 else 100, 250 if geo_q else 500))
        try: page = max(1, int(params.get('page', 1)))
        except ValueError: page = 1
        total = len(idx)
        reach = min(total, 4000)  # only the first 4000 results are reachable; later pages repeat earlier ones
        start = (page - 1) * per_page
        n = max(0, min(per_page, total - start))
        rows = idx[(start + np.arange(n)) % reach] if n else idx[:0]
        s = u01(self.emu.seed, 'strings', key, attempt) < 0.5  # numbers as strings, decided per response
        num = (lambda v: str(v)) if s else (lambda v: v)
        extras = {e.strip() for e in params.get('extras', '').split(',') if e.strip()}
        photos = [self.photo(r, extras, num, self.base(h)) for r in rows.tolist()]
        return {'photos': {'page': num(page), 'pages': num(max(1, math.ceil(total / per_page)) if total else 0),
                           'perpage': num(per_page), 'total': num(total), 'photo': photos}, 'stat': 'ok'}

    def photo(self, r, extras, num, base) -> dict:
        df = self.world.flickr
        p = {'id': df['id'].iat[r], 'owner': df['owner'].iat[r], 'secret': df['secret'].iat[r],
             'server': df['server'].iat[r], 'farm': int(df['farm'].iat[r]), 'title': df['title'].iat[r],
             'ispublic': 1, 'isfriend': 0, 'isfamily': 0}
        if 'license' in extras: p['license'] = str(int(df['license'].iat[r]))
        if 'date_upload' in extras: p['dateupload'] = str(int(df['uploaded'].iat[r]))
        if 'date_taken' in extras:
            p['datetaken'] = datetime.fromtimestamp(int(df['taken'].iat[r]), timezone.utc).strftime('%Y-%m-%d %H:%M:%S')
            p['datetakengranularity'] = 0
            p['datetakenunknown'] = str(int(df['taken_unknown'].iat[r]))
        if 'owner_name' in extras: p['ownername'] = df['owner_name'].iat[r]
        if 'tags' in extras: p['tags'] = df['tags'].iat[r]
        if 'views' in extras: p['views'] = str(int(df['views'].iat[r]))
        if 'geo' in extras:
            lat, lon = df['lat'].iat[r], df['lon'].iat[r]
            if np.isnan(lat): p.update(latitude=0, longitude=0, accuracy=0, context=0)
            else: p.update(latitude=num(round(float(lat), 6)), longitude=num(round(float(lon), 6)),
                           accuracy=str(int(df['accuracy'].iat[r])), context=num(int(df['geo_context'].iat[r])),
                           geo_is_public=1)
        if 'o_dims' in extras or 'url_o' in extras:
            p['o_width'], p['o_height'] = num(int(df['o_width'].iat[r])), num(int(df['o_height'].iat[r]))
        F = self.emu.faults  # some photos lack the larger sizes (decided per photo: it is a property of the photo)
        small_only = F.p_missing_size > 0 and u01(F.seed, 'missing_size', df['id'].iat[r]) < F.p_missing_size
        for e in extras:
            if e in FLICKR_SIZES:
                suffix, size = FLICKR_SIZES[e]
                if suffix == '_o' and not df['can_download'].iat[r]: continue
                if small_only and (size is None or size > 500): continue
                w, hh = self.world.image_size('flickr', df['id'].iat[r], 'original' if size is None else size)
                s = e[4:]
                p[e], p[f'height_{s}'], p[f'width_{s}'] = self.url(base, r, e), num(hh), num(w)
        return p


def to_xml(obj) -> str:
    "Flickr's REST XML for the few response shapes the emulator makes."
    if obj.get('stat') == 'fail':
        return (f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="fail">\n\t<err code={quoteattr(str(obj["code"]))} '
                f'msg={quoteattr(obj["message"])} />\n</rsp>\n')
    (name, body), = [(k, v) for k, v in obj.items() if k != 'stat']
    def attrs(d): return ' '.join(f'{k}={quoteattr(str(v))}' for k, v in d.items() if not isinstance(v, (list, dict)))
    kids = ''.join(f'\n\t\t<{k[:-1] if k.endswith("s") and k != "sizes" else k} {attrs(c)} />'
                   for k, v in (body.items() if isinstance(body, dict) else []) if isinstance(v, list) for c in v)
    inner = f'<{name} {attrs(body)}>{kids}\n\t</{name}>' if isinstance(body, dict) else f'<{name}>{body}</{name}>'
    return f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="ok">\n\t{inner}\n</rsp>\n'
