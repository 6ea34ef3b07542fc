"""What a crawl of a synthetic world returns, in the project's record schema: every image of a bounding-box crawl
(outside the city too), Flickr photos found twice (by two keyword searches), for lessons and tests of labeling.

Used by the labeling lesson and tests, which need crawl output without running a crawl."""
from __future__ import annotations

import pandas as pd

from .world import World

__all__ = ['crawl_records']


def crawl_records(world:World, # from `synthetic_world` / `barcelona_world`
                  *,
                  twice:float=0.05, # share of Flickr photos found a second time
                  seed:int=0, # which ones, and the row order
                 ) -> pd.DataFrame: # id, source, lat, lon, url, captured_at (UTC), sequence; Flickr: owner, taken_local
    "The records a complete crawl of `world` by bounding box would give, both sources, in the record schema."
    m, f = world.mapillary, world.flickr[world.flickr.lat.notna()]
    mly = pd.DataFrame({'id': m.id.astype(str), 'source': 'mapillary', 'lat': m.lat, 'lon': m.lon,
                        'url': 'https://images.example.org/mapillary/' + m.id.astype(str) + '/thumb_1024.jpg',
                        'captured_at': pd.to_datetime(m.captured_at, unit='ms', utc=True), 'sequence': m.sequence})
    fl = pd.DataFrame({'id': f.id.astype(str), 'source': 'flickr', 'lat': f.lat, 'lon': f.lon,
                       'url': 'https://images.example.org/flickr/' + f.id.astype(str) + '_z.jpg',
                       'captured_at': pd.NaT, 'sequence': None, 'owner': f.owner.astype(str),
                       # Flickr's datetaken: the camera's clock, no zone (as geoloc.flickr keeps it)
                       'taken_local': pd.to_datetime(f.taken, unit='s')})
    fl = pd.concat([fl, fl.sample(frac=twice, random_state=seed)]).sample(frac=1, random_state=seed)
    out = pd.concat([mly, fl], ignore_index=True)
    out['captured_at'] = out.captured_at.astype('datetime64[ns, UTC]')
    out['taken_local'] = out.taken_local.astype('datetime64[ns]')
    return out
