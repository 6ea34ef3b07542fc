"""The study against the authors' own code and files: their split (the download loop of IIIA-ML/geoloc's
mapillary_downloader.py), their published eval CSV; and the leakage-free evaluation (issue 15)."""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoloc.labeling import SPLITS, district_counts, split_dataset
from geoloc.metrics import read_predictions, topk_accuracy

FIX = Path(__file__).parent / 'fixtures'
# torchvision's ImageFolder numbers classes by sorted folder name: the authors' targets
BCN_CLASSES = ['Ciutat Vella', 'Eixample', 'Gràcia', 'Horta-Guinardó', 'Les Corts', 'Nou Barris', 'Sant Andreu',
               'Sant Martí', 'Sants-Montjuïc', 'Sarrià-Sant Gervasi']


def test_the_authors_eval_csv_reads_without_its_checkpoint_copies():
    "Their bcn/mapillary_eval.csv holds 28 .ipynb_checkpoints copies; an excerpt with one of them reads, warning once."
    with pytest.warns(UserWarning, match=r'skipped 1 row\(s\) of Jupyter \.ipynb_checkpoints'):
        pred = read_predictions(FIX / 'reference' / 'mapillary_eval_excerpt.csv', classes=BCN_CLASSES)
    assert len(pred) == 12 and pd.Series(pred.ids).is_unique and '111916' in set(pred.ids)
    assert pred.logits.shape == (12, 10)
    best = pd.read_csv(FIX / 'reference' / 'mapillary_eval_excerpt.csv')
    best = best[~best.name.str.contains('ipynb_checkpoints')]
    assert (pred.preds == best['best prediction'].to_numpy()).all()   # their argmax, from the two-line vectors
    assert topk_accuracy(pred.logits, pred.targets) == pytest.approx((pred.preds == pred.targets).mean())


def _records(n_per=(23, 7, 15), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for d, n in zip('ABC', n_per):
        rows += [{'id': f'{d}{i}', 'district': d, 'sequence': f'{d}s{i // 4}'} for i in range(n)]
    df = pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)   # districts interleaved
    return df.assign(lat=rng.uniform(41.38, 41.40, len(df)), lon=rng.uniform(2.15, 2.17, len(df)))


def test_the_papers_split_is_the_authors_download_loop():
    """Per district, in record order: train while train holds < 0.9 x the district's records (a failed download takes
    no place), then validation: the contiguous tail of each district (mapillary_downloader.py at 3672842)."""
    assert 'paper' in SPLITS
    ds = _records()
    s = split_dataset(ds, how='paper')
    for d, g in s.groupby('district', sort=False):
        n, flags = len(g), (g.split == 'valid').tolist()
        assert flags == sorted(flags) and sum(not f for f in flags) == int(np.ceil(0.9 * n)), d
    # the loop, as the authors wrote it, replayed on the same records with some downloads failing
    failed = ds.assign(status=np.where(np.arange(len(ds)) % 20 == 2, 'failed', 'ok'))
    want, train = [], {}
    for _, r in failed.iterrows():
        total = (failed.district == r.district).sum()
        if train.get(r.district, 0) < 0.9 * total:
            want.append('train'); train[r.district] = train.get(r.district, 0) + (r.status == 'ok')
        else: want.append('valid')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # the small district may end with no validation image: said, and expected
        got = split_dataset(failed, how='paper')
    ok = failed.status == 'ok'
    assert got.split[ok].tolist() == pd.Series(want)[ok].tolist()
    # a random split is not the paper's: it shares only a chance share of the paper's validation images
    rnd = split_dataset(ds, how='random')
    both = ((rnd.split == 'valid') & (s.split == 'valid')).sum()
    assert both < (s.split == 'valid').sum()


def test_great_circle_metrics_measure_from_the_predicted_location():
    """The geolocation error is the great-circle distance from the predicted location (the predicted district's
    point) to the photo; the distance to the predicted district (0 when right) is only a lower bound."""
    import geopandas as gpd
    import shapely
    from geoloc.geojson import area_centroids
    from geoloc.metrics import Predictions, geo_errors, geo_metrics, haversine_km
    west_east = gpd.GeoDataFrame({'name': ['West', 'East']}, crs=25831, geometry=[
        shapely.box(430_000, 4_580_000, 432_000, 4_582_000), shapely.box(432_000, 4_580_000, 434_000, 4_582_000)]).to_crs(4326)
    pts = gpd.GeoSeries(gpd.points_from_xy([430_100, 431_000, 433_900], [4_580_100, 4_581_000, 4_581_000]),
                        crs=25831).to_crs(4326)
    ds = pd.DataFrame({'id': ['a', 'b', 'c'], 'lat': pts.y, 'lon': pts.x})
    # a and b right (West), c wrong (said West, is 1.9 km east of West's edge)
    pred = Predictions(np.array(['a', 'b', 'c']), np.array([0, 0, 1]), np.array([[2., 0], [2., 0], [2., 0]]), ['West', 'East'])
    e = geo_errors(pred, ds, west_east).set_index('id')
    c = area_centroids(west_east).set_index('name')
    assert e.loc['b', 'gc_km'] == pytest.approx(0.0, abs=0.01)                  # at West's centre
    assert e.loc['a', 'gc_km'] == pytest.approx(np.hypot(0.9, 0.9), rel=0.01)   # right district, yet 1.27 km off
    assert e.loc['a', 'km'] == 0 and e.loc['c', 'km'] == pytest.approx(1.9, rel=0.01)
    assert e.loc['c', 'gc_km'] == pytest.approx(haversine_km(c.lat['West'], c.lon['West'], ds.lat[2], ds.lon[2]))
    g = geo_metrics(e.reset_index())
    assert g['gc_acc_1km'] == pytest.approx(1 / 3) and g['gc_acc_5km'] == 1.0 and g['gc_acc_0.5km'] == pytest.approx(1 / 3)
    assert g['gc_median_km'] == pytest.approx(np.hypot(0.9, 0.9), rel=0.01) and g['median_km'] == 0


@pytest.fixture(scope='module')
def city_records():
    "Crawl records of a stand-in city (Mapillary sequences, Flickr photos with owners and dates), labelled."
    from geoloc.labeling import build_dataset
    from geoloc.sim import crawl_records, synthetic_city, synthetic_world
    world = synthetic_world(synthetic_city(8, seed=6), mapillary=4000, flickr=1500, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return build_dataset(crawl_records(world), world.areas)


def test_the_spatial_split_leaks_no_sequence_and_keeps_a_buffer(city_records):
    "Item 5: no validation image shares a sequence (or owner-day) with training, none is within buffer_m of one."
    from scipy.spatial import cKDTree
    from geoloc.geojson import to_metres
    from geoloc.labeling import leakage_report
    ds = city_records
    s = split_dataset(ds, how='spatial', block_m=400, buffer_m=150)
    assert set(s.split) == {'train', 'valid', 'buffer'}
    tr, va = s[s.split == 'train'], s[s.split == 'valid']
    assert not set(tr.sequence.dropna()) & set(va.sequence.dropna())
    xy = to_metres(s.lat, s.lon)
    d, _ = cKDTree(xy[(s.split == 'train').to_numpy()]).query(xy[(s.split == 'valid').to_numpy()])
    assert d.min() > 150
    fl = s[s.source == 'flickr']
    day = pd.to_datetime(fl.taken_local).dt.date.astype(str) if 'taken_local' in fl else None
    if day is not None and fl.owner.notna().any():
        key = fl.owner.astype(str) + '@' + day
        assert not set(key[fl.split == 'train']) & set(key[fl.split == 'valid'])
    rep = leakage_report(ds, hows=('random', 'spatial'), block_m=400, buffer_m=150)
    assert rep.loc['spatial', 'sequence_leak_pct'] == 0 and rep.loc['random', 'sequence_leak_pct'] > 50
    assert 0 < rep.loc['spatial', 'dropped_pct'] < 40
    share = (s.split == 'valid').groupby(s.district).mean()
    assert share.min() > 0.02 and share.max() < 0.3   # per-district validation shares stay near valid_pct


def test_flickr_photos_are_grouped_by_owner_and_day(city_records):
    from geoloc.splits import leak_groups
    fl = city_records[city_records.source == 'flickr'].head(300)
    g = leak_groups(fl)
    assert (g >= 0).all()
    key = fl.owner.astype(str) + '@' + pd.to_datetime(fl.taken_local).dt.date.astype(str)
    assert pd.Series(g).groupby(key.to_numpy()).nunique().max() == 1 and len(set(g)) == key.nunique()


def test_a_district_left_without_validation_is_loud():
    ds = pd.DataFrame({'id': [str(i) for i in range(42)], 'district': ['big'] * 40 + ['tiny'] * 2,
                       'lat': 41.39, 'lon': 2.16})
    with pytest.warns(UserWarning, match=r"left 1 district\(s\) without any validation image: \['tiny'\]"):
        split_dataset(ds, how='random')


# ------------------------------------------------------------------------------------------------ the study itself
def test_the_papers_split_has_a_k_fold_form_and_folds_become_splits(city_records):
    "Item 6: paper folds are contiguous runs per source and district (fold k-1 = the authors' tail); spatial folds keep the buffer."
    from scipy.spatial import cKDTree
    from geoloc.geojson import to_metres
    from geoloc.splits import fold_split, kfold
    ds = city_records
    pk = kfold(ds, 10, how='paper')
    assert all(g.fold.is_monotonic_increasing for _, g in pk.groupby(['source', 'district']))
    assert ((pk.fold == 9) == (split_dataset(ds, how='paper').split == 'valid')).all()
    sf = kfold(ds, 4, how='spatial', block_m=400)
    for f in range(4):
        s = fold_split(sf, f, how='spatial', buffer_m=150)
        xy = to_metres(ds.lat, ds.lon)
        d, _ = cKDTree(xy[s == 'train']).query(xy[s == 'valid'])
        assert d.min() > 150 and not set(ds.sequence[s == 'train'].dropna()) & set(ds.sequence[s == 'valid'].dropna())


def test_intervals_resample_whole_sequences():
    "Item 6: 40 sequences of 25 identical frames: the interval is as wide as 40 tries, not 1,000."
    from geoloc.metrics import cluster_bootstrap
    hit = np.repeat(np.random.default_rng(0).random(40) < 0.6, 25).astype(float)
    seq = np.repeat(np.arange(40), 25)
    est, lo, hi = cluster_bootstrap(hit, seq, n=1000)
    _, nlo, nhi = cluster_bootstrap(hit, n=1000)
    assert lo < est < hi and (hi - lo) > 4 * (nhi - nlo)
    assert (hi - lo) == pytest.approx(2 * 1.96 * np.sqrt(est * (1 - est) / 40), rel=0.2)


@pytest.fixture(scope='module')
def study_demo(tmp_path_factory):
    "configs/study-demo.toml through the command line, as a user runs it: 2 splits x 2 folds x 2 sources."
    import subprocess
    import sys
    out = tmp_path_factory.mktemp('study') / 'demo'
    cfg = Path(__file__).resolve().parents[1] / 'configs' / 'study-demo.toml'
    r = subprocess.run([sys.executable, '-m', 'geoloc.cli', 'study', str(cfg), '--out', str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '8 of 8 runs finished' in r.stdout
    return cfg, out


def test_the_demo_study_reports_every_table_with_intervals(study_demo):
    "Items 6, 8, 9, 10: one report, pooled figures with 95% intervals, per-source validation, transfer, leakage, figures."
    from PIL import Image
    _, out = study_demo
    rep = out / 'report'
    text = (rep / 'README.md').read_text()
    for part in ('95% intervals', 'Cross-source transfer', "The paper's Table 1", 'Leakage of each split', 'top1.pdf'):
        assert part in text, part
    s = pd.read_csv(rep / 'summary.csv')
    assert len(s) == 2 * 2 * 3   # splits x sources x (all, mapillary, flickr)
    for m in ('top1', 'top5', 'gc_acc_1km', 'gc_median_km'):
        assert ((s[f'{m}_lo'] <= s[m] + 1e-9) & (s[m] <= s[f'{m}_hi'] + 1e-9)).all(), m
    assert (s.top1_hi > s.top1_lo).all() and (s.runs == 2).all()
    runs = pd.read_csv(rep / 'runs.csv')
    assert runs.run.nunique() == 8 and set(runs.valid_on) == {'all', 'mapillary', 'flickr'}
    whole = runs[runs.valid_on == 'all'].set_index(['split', 'source', 'fold'])
    parts = runs[runs.valid_on != 'all'].groupby(['split', 'source', 'fold']).images.sum()
    assert (whole.images == parts.reindex(whole.index)).all()   # the sources' photos add up to the whole
    leak = pd.read_csv(rep / 'leakage.csv', index_col=0)
    assert leak.loc['spatial', 'sequence_leak_pct'] == 0 and leak.loc['random', 'sequence_leak_pct'] > 0
    assert Image.open(rep / 'top1.png').info['dpi'][0] == pytest.approx(300, abs=1)
    assert (rep / 'top1.pdf').read_bytes()[:4] == b'%PDF' and (rep / 'curves.pdf').exists()
    assert '|   Photos |' in text or 'Photos' in text


def test_every_source_validates_on_the_same_photos_and_equal_size_takes_whole_sequences(study_demo):
    "Items 8, 9: per fold, one validation set for all sources; mapillary-equal ~ the fold's Flickr training size."
    from geoloc.labeling import load_dataset
    _, out = study_demo
    for split in ('random', 'spatial'):
        for fold in (0, 1):
            a = load_dataset(out / 'datasets' / f'{split}-seed0-fold{fold}-all')
            e = load_dataset(out / 'datasets' / f'{split}-seed0-fold{fold}-mapillary-equal')
            assert (a.split == 'valid').tolist() == (e.split == 'valid').tolist()
            fl = ((a.split == 'train') & (a.source == 'flickr')).sum()
            tr = e[e.split == 'train']
            assert set(tr.source) == {'mapillary'} and fl <= len(tr) < fl + 60
            unused = e[(e.split == 'unused') & (e.source == 'mapillary')]
            assert not set(tr.sequence) & set(unused.sequence)   # whole sequences drawn


def test_the_study_resumes_per_experiment_and_refuses_another_grid(study_demo):
    "Item 10: a lost run is trained again alone; the same folder under other settings is refused."
    import dataclasses
    import shutil
    from geoloc.study import load_study, run_study
    cfg_path, out = study_demo
    cfg = dataclasses.replace(load_study(cfg_path), out=str(out))
    shutil.rmtree(out / 'runs' / 'spatial' / 'all' / 'focalnet_pico_srf' / 'seed0-fold1')
    res = run_study(cfg, progress=False)
    assert res.status.value_counts().to_dict() == {'done': 7, 'trained': 1}
    with pytest.raises(ValueError, match=r'other settings \(folds\)'):
        run_study(dataclasses.replace(cfg, folds=3), progress=False)
