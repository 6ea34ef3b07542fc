"""The real services' answers, replayed: recorded bodies (tests/fixtures/recorded, each with its source) are served
from a local HTTP server to geoloc's client, crawlers and downloader; and geoloc.sim, with the matching fault mode
on, answers in the same shape, so that the crawl and download tests meet the real behaviours too (issue 14)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pandas as pd
import pytest
import shapely
import urllib3

from geoloc.crawlio import ApiClient, ApiError, Gone, TokenRejected, TooDense
from geoloc.flickr import crawl_photos, parse_photo, photo_url, records_frame
from geoloc.images import download_images
from geoloc.mapillary import crawl_images, is_full
from geoloc.sim import FLICKR_KEY, MAPILLARY_TOKEN, Emulator, Faults, synthetic_city, synthetic_world

RECORDED = Path(__file__).parent / 'fixtures' / 'recorded'
TOKEN = 'MLY|4242|0123456789abcdef0123456789abcdef'


def recorded(name: str) -> dict:
    d = json.loads((RECORDED / f'{name}.json').read_text())
    assert d['source'], name   # every recorded answer names where it was seen
    return d


class Replay:
    "A local HTTP server answering each path prefix from a script: a list of recorded answers (the last one repeats)."
    def __init__(self, script: dict):
        self.script, self.seen, self.lock = {k: list(v) for k, v in script.items()}, [], threading.Lock()
        outer = self
        class H(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *a): pass
            def do_GET(self):
                u = urlsplit(self.path)
                with outer.lock:
                    outer.seen.append((u.path, dict(parse_qsl(u.query)), dict(self.headers)))
                    key = next((k for k in sorted(outer.script, key=len, reverse=True) if u.path.startswith(k)), None)
                    todo = outer.script.get(key) or [{'status': 404, 'headers': {}, 'body': 'no script'}]
                    ans = todo.pop(0) if len(todo) > 1 else todo[0]
                if callable(ans): ans = ans(u.path, dict(parse_qsl(u.query)))
                body = ans['body'] if isinstance(ans['body'], (str, bytes)) else json.dumps(ans['body'])
                body = body.encode() if isinstance(body, str) else body
                self.send_response(ans['status'])
                for k, v in {'Content-Type': 'application/json', **ans.get('headers', {})}.items(): self.send_header(k, v)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.url = f'http://127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
    def __enter__(self): return self
    def __exit__(self, *exc): self.server.shutdown(); self.server.server_close()


OK_DATA = {'status': 200, 'headers': {}, 'body': {'data': []}}
AREA = shapely.box(2.15, 41.38, 2.16, 41.39)


def client(url, **kw):
    return ApiClient(url, headers={'Authorization': f'OAuth {TOKEN}'}, backoff=0, max_retries=3,
                     token_hint='set MAPILLARY_TOKEN to a valid token (mapillary.com/dashboard/developers)', **kw)


# ------------------------------------------------------------------------------------------------ Mapillary
@pytest.mark.parametrize('name', ['mly_token_500', 'mly_token_368'])
def test_a_rejected_token_stops_at_once_whatever_the_status(name, capsys):
    "Behaviour 2: code 190 at HTTP 500 (or OAuthException 368) is a rejected token: no retries, the fix named."
    with Replay({'/images': [recorded(name)]}) as srv:
        with pytest.raises(TokenRejected) as e:
            crawl_images(AREA, TOKEN, base_url=srv.url, progress=False, token_env='MY_MLY_TOKEN')
        assert len(srv.seen) == 1
    msg = str(e.value)
    assert 'MY_MLY_TOKEN' in msg and TOKEN not in msg and TOKEN.split('|')[2] not in msg + capsys.readouterr().err


@pytest.mark.parametrize('name', ['mly_throttle_403', 'mly_throttle_429'])
def test_throttling_is_retried_whatever_the_status(name):
    "Behaviour 3: 'Application request limit reached' (code 4, is_transient) as 403, or code 613 as 429: back off."
    with Replay({'/images': [recorded(name), recorded(name), OK_DATA]}) as srv:
        c = client(srv.url)
        assert c.get_json('images', {'bbox': '2.15,41.38,2.16,41.39'}) == {'data': []}
        assert c.stats['retries'] == 2 and len(srv.seen) == 3


@pytest.mark.parametrize('name', ['mly_dense_message', 'mly_dense_user_msg', 'mly_dense_504'])
def test_dense_box_answers_mean_split_not_retry(name):
    "Behaviour 4: 500 code 1 (hint in message or only in error_user_msg, subcode 99) or a 504: TooDense at once."
    from geoloc.mapillary import BoxCrawl  # noqa: F401  (the crawler's own classifier is what is tested next)
    from geoloc import mapillary
    with Replay({'/images': [recorded(name)]}) as srv:
        c = client(srv.url, giveup=mapillary._dense)
        with pytest.raises(TooDense): c.get_json('images', {'bbox': '2.15,41.38,2.16,41.39'})
        assert len(srv.seen) == 1


def test_dense_boxes_are_split_until_they_answer():
    "Behaviour 4 in a crawl: a box answering 'reduce the amount of data' is quartered; every image is found."
    rows = [{'id': str(i), 'computed_geometry': {'type': 'Point', 'coordinates': [2.1505 + 0.001 * (i % 9), 41.3805 + 0.001 * (i // 9)]},
             'captured_at': 1_600_000_000_000 + i, 'sequence': f's{i // 5}'} for i in range(81)]
    dense = recorded('mly_dense_user_msg')
    def answer(path, q):
        x0, y0, x1, y1 = map(float, q['bbox'].split(','))
        if (x1 - x0) * (y1 - y0) > 2.6e-5: return dense   # a box over ~a quarter of the area is "too dense"
        inside = [r for r in rows if x0 <= r['computed_geometry']['coordinates'][0] <= x1
                  and y0 <= r['computed_geometry']['coordinates'][1] <= y1]
        return {'status': 200, 'headers': {}, 'body': {'data': inside}}
    with Replay({'/images': [answer]}) as srv:
        df = crawl_images(AREA, TOKEN, base_url=srv.url, progress=False)
    assert sorted(df.id, key=int) == [r['id'] for r in rows]
    assert df.attrs['summary']['dense'] > 0


def test_read_timeouts_on_big_answers_split_the_box():
    "Behaviour 4: a client-side read time-out twice in a row on one box splits it (stand-in: dense_kind='slow')."
    world = synthetic_world(synthetic_city(4, seed=1), mapillary=600, flickr=10, seed=1)
    area = shapely.union_all(world.areas.geometry)
    x0, y0, x1, y1 = area.bounds
    with Emulator(world, faults=Faults(dense_above=300, dense_kind='slow', dense_sleep=2.0)) as emu:
        df = crawl_images(area, MAPILLARY_TOKEN, base_url=emu.mapillary_url, progress=False, timeout=0.5, limit=2000)
    m = world.mapillary
    truth = set(m.id[shapely.intersects_xy(area, m.lon.to_numpy(), m.lat.to_numpy())])
    assert set(df.id) == truth and df.attrs['summary']['dense'] > 0


def test_full_with_fewer_rows_than_the_limit_is_still_full():
    "Behaviour 1: 1,935 rows of 2,000 (and paging.next) may hide more: split, never conclude completeness."
    rec = recorded('mly_short_full')['body']
    ans = {'data': [{}] * rec['rows'], 'paging': rec['paging']}
    assert is_full(ans, rec['limit'])
    assert is_full({'data': [{}] * rec['rows']}, rec['limit'])                 # near the limit, even without paging
    assert not is_full({'data': [{}] * 1200}, rec['limit'])


def test_the_crawl_is_complete_when_full_answers_come_short():
    "Behaviour 1 in a crawl: the stand-in answers 96.75% of `limit` when more match; nothing is missed."
    world = synthetic_world(synthetic_city(4, seed=2), mapillary=3000, flickr=10, seed=2)
    area = shapely.union_all(world.areas.geometry)
    with Emulator(world, faults=Faults(short_full=0.9675)) as emu:
        df = crawl_images(area, MAPILLARY_TOKEN, base_url=emu.mapillary_url, progress=False, limit=100)
        naive = crawl_images(area, MAPILLARY_TOKEN, base_url=emu.mapillary_url, progress=False, limit=100, full_at=1.0)
    m = world.mapillary
    truth = set(m.id[shapely.intersects_xy(area, m.lon.to_numpy(), m.lat.to_numpy())])
    assert set(df.id) == truth
    assert len(set(naive.id)) < len(truth)   # trusting `len(data) < limit` (paging.next alone) loses images


def test_only_code_100_subcode_33_means_gone():
    "Behaviour 5: on entity look-up, 400 code 100 subcode 33 is a deleted image; another 400 code 100 is an error."
    with Replay({'/1234567890': [recorded('mly_gone_100_33')], '/555': [recorded('mly_bad_field_100')]}) as srv:
        c = client(srv.url)
        with pytest.raises(Gone): c.get_json('1234567890', {'fields': 'thumb_1024_url'})
        with pytest.raises(ApiError) as e: c.get_json('555', {'fields': 'thumb_4096_url'})
        assert not isinstance(e.value, Gone)


def test_the_downloader_stops_resolving_after_a_rejected_token(tmp_path):
    "Behaviours 2 and 5 in the downloader: one 500/190 answer ends all thumbnail look-ups; 100/33 marks 'deleted'."
    ds = pd.DataFrame({'id': [str(i) for i in range(6)], 'source': 'mapillary', 'url': None})
    with Replay({'/': [recorded('mly_token_500')]}) as srv:
        out = download_images(ds, tmp_path / 'a', token=TOKEN, graph_url=srv.url, workers=1, progress=False, backoff=0)
        lookups = len(srv.seen)
    assert lookups == 1 and (out.status == 'failed').all()
    assert out.error.str.contains('token').all() and not out.error.str.contains(TOKEN.split('|')[2]).any()
    with Replay({'/': [recorded('mly_gone_100_33')]}) as srv:
        out = download_images(ds.head(2), tmp_path / 'b', token=TOKEN, graph_url=srv.url, workers=1, progress=False,
                              backoff=0)
    assert out.error.str.contains('deleted').all()


# ------------------------------------------------------------------------------------------------ Flickr
def test_flickr_code_10_and_105_are_retried():
    "Behaviour 6: `stat: fail` code 10 (search API not available) and 105 at HTTP 200 are temporary."
    from geoloc.flickr import check_answer
    from geoloc.crawlio import RetryableError
    for name in ('flickr_code_10', 'flickr_code_105'):
        with pytest.raises(RetryableError): check_answer(recorded(name)['body'])
    page = recorded('flickr_missing_size')
    with Replay({'/services/rest': [recorded('flickr_code_10'), recorded('flickr_code_105'), page]}) as srv:
        df = crawl_photos(AREA.buffer(0.05), 'k' * 32, base_url=srv.url + '/services/rest', keywords=['barcelona'],
                          progress=False, calls_per_hour=None, static_url=srv.url + '/static')
    assert len(srv.seen) >= 3 and set(df.id) == {'53120000001', '53120000002'}


def test_missing_sizes_fall_back_and_datetaken_stays_local():
    "Behaviours 7, 8: a missing url_z falls back to the next size asked for, then to the static URL; datetaken is local."
    photos = recorded('flickr_missing_size')['body']['photos']['photo']
    a, b = photos
    assert photo_url(a, ['url_z', 'url_m'])[0] == a['url_m']
    url, kind = photo_url(b, ['url_z', 'url_m'])
    assert url.endswith(f"/{b['server']}/{b['id']}_{b['secret']}_z.jpg")
    df = records_frame([parse_photo(p, 'url_z,url_m') for p in photos])
    assert str(df.taken_local.iloc[0]) == '2023-08-17 21:14:05' and df.taken_local.dt.tz is None   # the camera's clock
    assert df.captured_at.isna().all()   # no zone: never turned into a UTC instant
    assert df.lat.tolist() == [41.4036, 41.3791] and df.license.tolist() == [4, 0]   # numbers as strings or not
    assert df.url_kind.tolist() == ['extra', 'static']


# ------------------------------------------------------------------------------------------------ the stand-ins
def _shape(err: dict) -> tuple:
    e = err['error']
    return (e['code'], e.get('error_subcode'), e.get('is_transient', False), 'error_user_msg' in e, e['type'])


def test_the_stand_ins_answer_in_the_recorded_shapes():
    "Each fault mode of geoloc.sim gives the recorded status and error shape (code, subcode, transient, fields)."
    world = synthetic_world(synthetic_city(3, seed=4), mapillary=800, flickr=200, seed=4)
    http = urllib3.PoolManager()
    def get(url, **h): return http.request('GET', url, headers=h, retries=False)
    x0, y0, x1, y1 = world.areas.total_bounds
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = f'{cx - 0.04},{cy - 0.04},{cx + 0.04},{cy + 0.04}'   # under the 0.01 square-degree limit
    with Emulator(world, faults=Faults(token_as_500=True)) as emu:
        r = get(f'{emu.mapillary_url}/images?bbox={box}', Authorization='OAuth MLY|1|wrong')
        want = recorded('mly_token_500')
        assert r.status == want['status'] and _shape(json.loads(r.data)) == _shape(want['body'])
    with Emulator(world, faults=Faults(p403_throttle=1.0)) as emu:
        r = get(f'{emu.mapillary_url}/images?bbox={box}', Authorization=f'OAuth {MAPILLARY_TOKEN}')
        want = recorded('mly_throttle_403')
        assert r.status == want['status'] and _shape(json.loads(r.data)) == _shape(want['body'])
    for kind, name in (('message', 'mly_dense_message'), ('user_msg', 'mly_dense_user_msg'), ('504', 'mly_dense_504')):
        with Emulator(world, faults=Faults(dense_above=1, dense_kind=kind)) as emu:
            r = get(f'{emu.mapillary_url}/images?bbox={box}', Authorization=f'OAuth {MAPILLARY_TOKEN}')
        want = recorded(name)
        assert r.status == want['status'], kind
        if kind != '504': assert _shape(json.loads(r.data)) == _shape(want['body']), kind
    with Emulator(world, faults=Faults(short_full=0.9675)) as emu:
        r = get(f'{emu.mapillary_url}/images?bbox={box}&limit=100', Authorization=f'OAuth {MAPILLARY_TOKEN}')
        d = json.loads(r.data)
        assert len(d['data']) == 96
    with Emulator(world, faults=Faults(p_search_unavailable=1.0, p_missing_size=1.0)) as emu:
        q = f'{emu.flickr_url}?method=flickr.photos.search&api_key={FLICKR_KEY}&format=json&nojsoncallback=1&text=x'
        assert json.loads(get(q).data) == recorded('flickr_code_10')['body']
    with Emulator(world, faults=Faults(p_missing_size=1.0)) as emu:
        q = (f'{emu.flickr_url}?method=flickr.photos.search&api_key={FLICKR_KEY}&format=json&nojsoncallback=1'
             f'&bbox={box}&min_upload_date=0&extras=geo,url_m,url_z&per_page=50')
        photos = json.loads(get(q).data)['photos']['photo']
        assert photos and all('url_m' in p and 'url_z' not in p for p in photos)
