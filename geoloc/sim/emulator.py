"""The two stand-ins started together on 127.0.0.1, in threads or a child process, with their counters and request
log; and `geoloc emulator`, which serves them from the command line.

Used by `geoloc demo`, the pipeline's `emulator` section, the lessons, tests and benchmarks; lesson: `nbs/10_sim.ipynb`."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path

from .faults import Faults
from .flickr import FlickrService
from .mapillary import MapillaryService
from .server import Resp, Server, json_resp, text_resp
from .world import FLICKR_KEY, MAPILLARY_TOKEN, SECRET_PARAMS, World, u01

__all__ = ['Emulator', 'child_main', 'emulator_cli']

# ------------------------------------------------------------------------------------------------ the emulator
class Emulator:
    "Mapillary Graph v4 and Flickr REST stand-ins on 127.0.0.1 over a `World`; a context manager."
    def __init__(self, world:World, # what to serve
                 *,
                 faults:Faults=None, # fault injection (default: none)
                 mapillary_token:str=MAPILLARY_TOKEN, # the only token the Graph API accepts
                 flickr_key:str=FLICKR_KEY, # the only API key Flickr accepts (32 hex characters)
                 thumb_ttl:float=3600, # seconds a signed thumbnail URL stays valid
                 max_bbox_area:float=0.01, # largest bbox search, square degrees
                 seed:int=0, # server secret and per-response choices
                 process:bool=False, # serve from a child process (benchmarks: no shared GIL)
                 host:str='127.0.0.1', # interface to bind
                 mapillary_port:int=0, # 0: any free port
                 flickr_port:int=0, # 0: any free port
                 log_size:int=100_000, # request log entries kept
                ):
        self.world, self.faults = world, faults or Faults()
        self.mapillary_token, self.flickr_key = mapillary_token, flickr_key
        self.thumb_ttl, self.max_bbox_area, self.seed, self.process = thumb_ttl, max_bbox_area, seed, process
        self.host, self._ports = host, (mapillary_port, flickr_port)
        self._secret = hashlib.sha256(f'geoloc-emulator|{seed}|{os.getpid()}|{time.time_ns()}'.encode()).digest()
        self._lock = threading.Lock()
        self._attempts, self._stats = Counter(), Counter()
        self._log = deque(maxlen=log_size)
        self._servers, self._threads, self._proc = [], [], None
        self.hosts = {}
        self.mapillary_url = self.flickr_url = self.flickr_static_url = None

    def __repr__(self):
        state = f'mapillary {self.mapillary_url}, flickr {self.flickr_url}' if self.mapillary_url else 'stopped'
        return f'Emulator({state}; {self.world!r}; faults={self.faults})'

    def __getstate__(self): raise TypeError('an Emulator is not picklable (it holds servers)')

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> 'Emulator':
        "Start both servers (threads, or a child process when `process=True`)."
        if self.mapillary_url: return self
        if self.process: return self._start_process()
        self.world.mly_arrays()  # build the index and the common JSON fragments before the first request
        for f in ('id', 'computed_geometry', 'captured_at', 'sequence'): self.world.mly_fragments(f)
        for name, cls, port in (('mapillary', MapillaryService, self._ports[0]), ('flickr', FlickrService, self._ports[1])):
            srv = Server((self.host, port), None)
            srv.app = cls(self)
            t = threading.Thread(target=srv.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True,
                                 name=f'emulator-{name}')
            t.start()
            self._servers.append(srv); self._threads.append(t)
            self.hosts[name] = f'{self.host}:{srv.server_address[1]}'
        self._urls()
        return self

    def _start_process(self):
        "Serve from a child Python process fed the pickled world on stdin (no main-module re-import, unlike spawn)."
        kw = dict(faults=asdict(self.faults), mapillary_token=self.mapillary_token, flickr_key=self.flickr_key,
                  thumb_ttl=self.thumb_ttl, max_bbox_area=self.max_bbox_area, seed=self.seed, host=self.host,
                  mapillary_port=self._ports[0], flickr_port=self._ports[1], log_size=self._log.maxlen)
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                          os.environ.get('PYTHONPATH')]))}
        self._proc = subprocess.Popen([sys.executable, '-c', 'from geoloc.sim.emulator import child_main; child_main()'],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            pickle.dump((self.world, kw), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            msg = json.loads(line) if line else {'error': f'exited with code {self._proc.wait(30)}'}
        except (OSError, ValueError) as e: msg = {'error': f'{type(e).__name__}: {e}'}
        if 'error' in msg:
            self._proc.kill(); self._proc.wait(10); self._proc = None
            raise RuntimeError(f"the emulator child process failed to start: {msg['error']}")
        self.hosts = msg['hosts']
        self._urls()
        return self

    def close(self):
        "Stop the servers and end their connections."
        if self._proc is not None:
            try: self._proc.stdin.close()  # the child stops at end of input
            except OSError: pass
            try: self._proc.wait(10)
            except subprocess.TimeoutExpired: self._proc.kill(); self._proc.wait(5)
            self._proc.stdout.close()
            self._proc = None
        for s in self._servers:
            s.shutdown(); s.close_connections(); s.server_close()
        for t in self._threads: t.join(5)
        self._servers, self._threads = [], []
        self.mapillary_url = self.flickr_url = self.flickr_static_url = None

    def _urls(self):
        "The services' base URLs, from the hosts they listen on."
        self.mapillary_url = f"http://{self.hosts['mapillary']}"
        self.flickr_url = f"http://{self.hosts['flickr']}/services/rest"
        self.flickr_static_url = f"http://{self.hosts['flickr']}/static"  # where the photos are: {server}/{id}_{secret}.jpg

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.close()

    # -------------------------------------------------------------------------------------------- bookkeeping
    def attempt(self, key) -> int:
        with self._lock:
            a = self._attempts[key]; self._attempts[key] += 1
        return a

    def count(self, key, n=1):
        with self._lock: self._stats[key] += n

    def record(self, service, endpoint, path, params, status, ms, nbytes, fault):
        red = {k: ('<redacted>' if k in SECRET_PARAMS else v) for k, v in params.items()}
        with self._lock:
            self._stats['requests'] += 1
            self._stats[f'requests.{service}.{endpoint}'] += 1
            self._stats[f'status.{service}.{endpoint}.{status or "dropped"}'] += 1
            self._stats['bytes'] += nbytes
            self._stats[f'bytes.{service}'] += nbytes
            if fault: self._stats[f'faults.{fault}'] += 1
            self._log.append({'t': time.time(), 'service': service, 'endpoint': endpoint, 'path': path,
                             'params': red, 'status': status, 'ms': round(ms, 3), 'bytes': nbytes, 'fault': fault})

    def stats(self) -> dict:
        "Counters: 'requests', 'requests.<service>.<endpoint>', 'status.<service>.<endpoint>.<code>', 'faults.<kind>', 'bytes'."
        if self._proc is not None: return self.admin_get('stats')
        with self._lock: return dict(sorted(self._stats.items()))

    @property
    def log(self) -> list:
        "The request log: dicts of t, service, endpoint, path, params (secrets redacted), status (0: dropped), ms, bytes, fault."
        return self.requests_log()

    def requests_log(self) -> list:
        "The request log as a list (from the child process too)."
        if self._proc is not None: return self.admin_get('log')
        with self._lock: return list(self._log)

    def reset(self):
        "Forget counters, log and attempt numbers (faults then repeat from the first attempt)."
        if self._proc is not None: return self.admin_get('reset')
        with self._lock: self._stats.clear(); self._attempts.clear(); self._log.clear()

    def admin_get(self, what):
        with urllib.request.urlopen(f'{self.mapillary_url}/_emulator/{what}', timeout=30) as r: return json.loads(r.read())

    def admin(self, path, params) -> Resp:
        what = path.rsplit('/', 1)[-1]
        if what == 'stats': return json_resp(200, self.stats())
        if what == 'log': return json_resp(200, self.requests_log())
        if what == 'reset': self.reset(); return json_resp(200, {'ok': True})
        return text_resp(404, 'Not Found')

    def sign(self, iid, size, exp) -> str:
        return hashlib.blake2b(f'{iid}|{size}|{exp}'.encode(), key=self._secret, digest_size=16).hexdigest()

    def _thumb_url(self, base, iid, size) -> str:
        exp = int((time.time() + self.thumb_ttl) * 1000)
        return f'{base}/cdn/mly/{iid}/{size}.jpg?exp={exp}&sig={self.sign(iid, size, exp)}'

    def gone(self, source, iid) -> bool:
        "Whether the image was deleted (the 404 fault: decided per image, so retries do not help)."
        p = self.faults.p404_image
        return p > 0 and u01(self.faults.seed, 'gone', source, iid) < p


def child_main():
    "Child process: read (world, options) pickled on stdin, serve, print the hosts, stop at end of stdin."
    try:
        world, kw = pickle.load(sys.stdin.buffer)
        emu = Emulator(world, faults=Faults(**kw.pop('faults')), **kw).start()
        print(json.dumps({'hosts': emu.hosts}), flush=True)
    except Exception as e:
        print(json.dumps({'error': f'{type(e).__name__}: {e}'}), flush=True); return
    try: sys.stdin.buffer.read()
    except (OSError, KeyboardInterrupt): pass
    emu.close()


# ------------------------------------------------------------------------------------------------ CLI
def emulator_cli(city:str='synthetic', # 'synthetic' (a made-up city), 'barcelona' (the paper's sizes), or an areas file
                 port:int=8765, # Mapillary Graph port; Flickr listens on port+1 (0: any free ports)
                 host:str='127.0.0.1', # interface to bind
                 scale:float=1.0, # barcelona: multiply the paper's counts
                 mapillary:int=20_000, # synthetic/file: in-city Mapillary images
                 flickr:int=5_000, # synthetic/file: in-city Flickr photos
                 seed:int=0, # world seed
                 faults:str='', # e.g. 'p429=0.05,p5xx=0.02,latency=0.01' (see `Faults`)
                 thumb_ttl:float=3600, # seconds a thumbnail URL stays valid
                 duration:float=0, # stop after this many seconds (0: until Ctrl-C)
                ):
    "Serve the Mapillary and Flickr emulators over a synthetic world until interrupted."
    from ..geojson import load_city
    from .generate import barcelona_world, synthetic_world
    t0 = time.perf_counter()
    if city.strip().lower() == 'barcelona': world = barcelona_world(scale=scale, seed=seed)
    else: world = synthetic_world(load_city(city, seed=seed), mapillary=mapillary, flickr=flickr, seed=seed)
    fl = Faults.parse(faults)
    emu = Emulator(world, faults=fl, thumb_ttl=thumb_ttl, host=host, mapillary_port=port,
                   flickr_port=port + 1 if port else 0)
    with emu:
        print(f'{world!r} built in {time.perf_counter() - t0:.1f} s', flush=True)
        print(f'mapillary_url {emu.mapillary_url}   (token {MAPILLARY_TOKEN})', flush=True)
        print(f'flickr_url {emu.flickr_url}   (api_key {FLICKR_KEY})', flush=True)
        print(f'faults {fl}', flush=True)
        try:
            end = time.time() + duration if duration else float('inf')
            while time.time() < end: time.sleep(min(0.2, max(0.0, end - time.time())))
        except KeyboardInterrupt: pass
        s = emu.stats()
    print(f"served {s.get('requests', 0)} requests, {s.get('bytes', 0):,} bytes", flush=True)