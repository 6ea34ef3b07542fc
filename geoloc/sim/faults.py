"""Fault injection for the stand-ins: every decision is a hash of (seed, request, attempt), so that two runs with the
same seed see the same faults and a retry re-rolls.

Used by `geoloc.sim.server` for every request; set from `Emulator(faults=...)` or `geoloc emulator --faults`."""
from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields

from .world import u01

__all__ = ['Faults']

# ------------------------------------------------------------------------------------------------ faults
@dataclass
class Faults:
    "Fault injection settings; every decision is a hash of (seed, request, attempt): same seed, same faults."
    latency:float=0.0 # seconds added to every response
    jitter:float=0.0 # up to this many more seconds, uniform
    p429:float=0.0 # probability of HTTP 429 with Retry-After
    retry_after:int=1 # the Retry-After header value (s)
    p5xx:float=0.0 # probability of HTTP 500/502/503/504
    p_drop:float=0.0 # probability of closing the connection without a response
    p_malformed:float=0.0 # JSON endpoints: probability of a truncated or non-JSON body (HTTP 200)
    p_truncated_jpeg:float=0.0 # images: probability of a truncated JPEG (HTTP 200, honest Content-Length)
    p_corrupt_jpeg:float=0.0 # images: probability of a body that is not a JPEG (HTTP 200, image/jpeg)
    p404_image:float=0.0 # images: probability that an image is gone (404, for good: decided per image, not per try)
    p_unavailable:float=0.0 # Flickr: `stat: fail` code 105 at HTTP 200; Mapillary: HTTP 500 Graph code 2
    dense_above:int=0 # Mapillary: bbox searches matching more images than this time out (HTTP 500, code 1); 0 = off
    dense_kind:str='message' # how a dense box fails: 'message' (500 code 1), 'user_msg' (hint only in error_user_msg, subcode 99), '504', 'slow' (no answer for dense_sleep s)
    dense_sleep:float=5.0 # 'slow' dense boxes: seconds before the (too late) answer
    short_full:float=0.0 # Mapillary: a search matching more than `limit` answers this share of `limit` rows (0.9675: 1,935 of 2,000), half of them with a paging.next; 0 = off
    token_as_500:bool=False # Mapillary: a bad token is answered HTTP 500 code 190 (as the real API sometimes does), not 401
    p403_throttle:float=0.0 # Mapillary: probability of HTTP 403 "Application request limit reached", code 4, is_transient
    p_search_unavailable:float=0.0 # Flickr: probability of `stat: fail` code 10 ("search API is not currently available") at HTTP 200
    p_missing_size:float=0.0 # Flickr: probability that a photo lacks the url_<size> extras asked for (only the sizes Flickr has)
    seed:int=0 # fault seed

    def roll(self, kind: str, key: str, attempt: int) -> bool:
        "Whether the fault `kind` (a field name) hits this request."
        p = getattr(self, kind)
        return p > 0 and u01(self.seed, kind, key, attempt) < p

    @classmethod
    def parse(cls, spec: str) -> 'Faults':
        "Faults from 'p429=0.1,p5xx=0.05,latency=0.01' (the CLI's form)."
        kw, names = {}, {f.name: f.type for f in dc_fields(cls)}
        for part in filter(None, (s.strip() for s in (spec or '').split(','))):
            k, _, v = part.partition('=')
            k = k.strip()
            if k not in names: raise ValueError(f'unknown fault {k!r} in {spec!r}. Fix: use {", ".join(names)}.')
            t = names[k]
            kw[k] = (int(v) if t in ('int', int) else v.strip() if t in ('str', str)
                     else v.strip().lower() in ('1', 'true', 'yes') if t in ('bool', bool) else float(v))
        return cls(**kw)
