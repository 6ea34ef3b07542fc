"""geoloc.files and the stages on a full disk: atomic writes with the team's permissions, errors that name the file
or folder, a crawl journal left intact by ENOSPC and a rerun that resumes to the same result."""
import errno
import json
import os
import stat

import pytest
import shapely

from geoloc.files import FileError, atomic_write, read_json, write_json
from geoloc.sim import MAPILLARY_TOKEN, Emulator, synthetic_city, synthetic_world


def test_atomic_files_get_normal_permissions(tmp_path):
    old = os.umask(0o002)   # a team sharing a folder
    try: p = atomic_write(tmp_path / 'a.json', '{}')
    finally: os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o664
    assert not list(tmp_path.glob('.*'))   # no temporary file left


def test_a_broken_json_file_is_named(tmp_path):
    (tmp_path / 'crawl.json').write_text('')
    with pytest.raises(FileError, match=r'crawl.json \(the crawl settings\) is empty'):
        read_json(tmp_path / 'crawl.json', what='the crawl settings')
    (tmp_path / 'x.json').write_text('{"a": ')
    with pytest.raises(FileError, match='x.json .* is not valid JSON'): read_json(tmp_path / 'x.json')


def test_a_full_disk_leaves_the_old_file_and_names_the_folder(tmp_path, monkeypatch):
    write_json(tmp_path / 's.json', {'v': 1})
    real = os.fsync
    def full(fd): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(FileError) as e: write_json(tmp_path / 's.json', {'v': 2})
    monkeypatch.setattr(os, 'fsync', real)
    assert str(tmp_path) in str(e.value) and 'full' in str(e.value)
    assert json.loads((tmp_path / 's.json').read_text()) == {'v': 1} and not list(tmp_path.glob('.*'))


def test_a_crawl_that_fills_the_disk_resumes_to_the_same_result(tmp_path, monkeypatch):
    "ENOSPC in the middle of a Mapillary crawl: an error naming the folder, the journal intact, the rerun identical."
    from geoloc import crawlio
    from geoloc.mapillary import crawl_images
    world = synthetic_world(synthetic_city(4, seed=5), mapillary=3000, flickr=10, seed=5)
    area = shapely.union_all(world.areas.geometry)
    with Emulator(world) as emu:
        clean = crawl_images(area, MAPILLARY_TOKEN, base_url=emu.mapillary_url, limit=100, progress=False)
        out = tmp_path / 'crawl'
        real, n = os.fsync, {'calls': 0}
        def fills_up(fd):
            n['calls'] += 1
            if n['calls'] > 6: raise OSError(errno.ENOSPC, 'No space left on device')
            return real(fd)
        monkeypatch.setattr(crawlio.os, 'fsync', fills_up)
        with pytest.raises(FileError) as e:
            crawl_images(area, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=out, limit=100, progress=False,
                         workers=1)
        monkeypatch.setattr(crawlio.os, 'fsync', real)
        assert str(out) in str(e.value) and 'resumes' in str(e.value)
        lines = (out / 'journal.jsonl').read_bytes().splitlines(keepends=True)
        assert lines and all(l.endswith(b'\n') and json.loads(l) for l in lines)   # every line whole
        again = crawl_images(area, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=out, limit=100, progress=False)
    assert again.attrs['summary']['replayed'] > 0
    assert sorted(again.id) == sorted(clean.id)
