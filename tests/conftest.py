"""Shared pytest fixtures: where ../shared is, and a local HTTP server for download code."""
import http.server
import os
import threading
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('GEOLOC_SHARED', ROOT.parent / 'shared'))


@pytest.fixture(scope='session')
def shared_dir():
    "The project's shared folder (../shared); tests that need it skip cleanly where it is absent."
    if not SHARED.is_dir(): pytest.skip(f'{SHARED} is absent')
    return SHARED


@pytest.fixture(scope='session')
def bcn_dir(shared_dir):
    "Barcelona's full-resolution boundary layers (districtes, gran-barri, terme-municipal)."
    d = shared_dir / 'data' / 'bcn'
    if not (d / 'districtes.geojson').exists(): pytest.skip(f'{d} has no districtes.geojson')
    return d


@pytest.fixture(scope='session')
def fixtures_dir():
    "Tiny committed fixtures (data/fixtures)."
    return ROOT / 'data' / 'fixtures'


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture
def serve_folder():
    "Start a real HTTP server on 127.0.0.1 serving a folder; returns a function folder -> base URL."
    servers = []
    def start(folder):
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), partial(_QuietHandler, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f'http://127.0.0.1:{srv.server_address[1]}'
    yield start
    for s in servers: s.shutdown(); s.server_close()
