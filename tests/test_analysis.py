"""geoloc.analysis as a user drives it: the reference eval CSV, metrics against hand-computed values, every figure,
Table 1 from run folders, the split comparison's checks, and `geoloc analyze` end to end."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from PIL import Image

from geoloc.analysis import (PAPER_TABLE1, Predictions, analyze, confusion, district_distance_km,
                             evaluate, expected_calibration_error, geo_errors, geo_metrics, majority_baseline,
                             model_name, per_class_report, plot_confusion, plot_curves, plot_distribution,
                             plot_geo_errors, plot_reliability, read_predictions, reliability, results_markdown,
                             results_table, show_predictions, softmax, splits_table, topk_accuracy, training_time)
from geoloc.cli import main
from geoloc.pipeline import compare_splits
from geoloc.geojson import load_areas

GEOLOC = [sys.executable, '-m', 'geoloc.cli']


def geoloc(*args, **kw):
    return subprocess.run([*GEOLOC, *map(str, args)], capture_output=True, text=True, timeout=180, **kw)


# ------------------------------------------------------------------------------------------------ fixtures
REFERENCE_CSV = '''name,target,best prediction,predictions
mapillary/val/Sant Martí/147793.jpeg,4,0,"[ 1.4667969   1.3476562   0.7890625  -1.4755859  -0.40673828
 -2.3652344 ]"
mapillary/val/Les Corts/179147.jpeg,3,3,"[-0.76904297 -0.74853516 -0.79052734  2.5429688  1.1738281
 -1.6591797 ]"
mapillary/val/Ciutat Vella/170212.jpeg,0,0,"[ 2.6269531e+00  9.8486328e-01  3.6206055e-01 -8.1884766e-01
 -3.2501221e-02 -1.5498047e+00]"
mapillary/val/Gràcia/180269.jpeg,2,2,"[ 1.2451172  -0.35742188  2.7558594  -0.7001953  -0.45410156 -2.015625  ]"
mapillary/val/Eixample/167365.jpeg,1,4,"[ 0.7055664   1.8398438   0.86376953 -1.3076172
  2.4287109  -1.2988281 ]"
'''
# class 5 (it would be 'Sants-Montjuïc' in the authors' folder order) has no row: named 'class 5' with a warning


@pytest.fixture
def reference_csv(tmp_path):
    p = tmp_path / 'mapillary_eval.csv'
    p.write_text(REFERENCE_CSV, encoding='utf-8')
    return p


def squares():
    "Two 1 km squares side by side in ETRS89 / UTM 31N, as WGS84 areas: West (x 430-431 km), East (431-432 km)."
    return gpd.GeoDataFrame({'name': ['West', 'East']}, crs=25831,
                            geometry=[shapely.box(430_000, 4_580_000, 431_000, 4_581_000),
                                      shapely.box(431_000, 4_580_000, 432_000, 4_581_000)]).to_crs(4326)


def lonlat(x, y):
    "UTM 31N metres -> WGS84 (lon, lat) arrays."
    g = gpd.GeoSeries(gpd.points_from_xy(x, y), crs=25831).to_crs(4326)
    return g.x.to_numpy(), g.y.to_numpy()


def make_run(root, areas, *, n_per=12, acc=0.7, epochs=3, seed=0, summary=True, name='run', source='mapillary'):
    """A run folder in the training stage's contract, with its dataset folder: points inside each area, tiny JPEGs,
    validation logits that are right for about `acc` of the images."""
    rng = np.random.default_rng(seed)
    ds_dir, run = root / f'{name}-dataset', root / name
    (ds_dir / 'images').mkdir(parents=True)
    run.mkdir()
    classes = list(areas.name)
    rows = []
    for k, (nm, g) in enumerate(zip(areas.name, areas.geometry)):
        pts = gpd.GeoSeries([g], crs=4326).sample_points(n_per, rng=rng).explode(index_parts=False)
        for i, pt in enumerate(pts):
            iid = f'{k:02d}{i:03d}'
            Image.new('RGB', (24, 18), tuple(int(v) for v in rng.integers(0, 255, 3))).save(ds_dir / 'images' / f'{iid}.jpg')
            rows.append(dict(id=iid, source=source, lat=pt.y, lon=pt.x, url=f'x://{iid}', sequence=f's{k}-{i // 4}',
                             district=nm, split='valid' if i % 3 == 0 else 'train', path=f'images/{iid}.jpg', status='ok'))
    ds = pd.DataFrame(rows)
    ds.to_parquet(ds_dir / 'dataset.parquet', index=False)
    areas.to_file(ds_dir / 'areas.geojson', driver='GeoJSON')
    areas.to_file(run / 'areas.geojson', driver='GeoJSON')
    valid = ds[ds.split == 'valid']
    t = valid.district.map(classes.index).to_numpy()
    right = rng.random(len(t)) < acc
    guess = np.where(right, t, (t + 1 + rng.integers(0, len(classes) - 1, len(t))) % len(classes))
    logits = rng.normal(0, 0.5, (len(t), len(classes)))
    logits[np.arange(len(t)), guess] += 3
    pd.DataFrame({'id': valid.id.to_numpy(), 'target': t, 'logits': list(logits)}).to_parquet(run / 'predictions.parquet')
    (run / 'classes.json').write_text(json.dumps(classes))
    (run / 'config.json').write_text(json.dumps({'preset': 'fast', 'arch': 'focalnet_tiny_srf', 'epochs': epochs}))
    (run / 'source.json').write_text(json.dumps({'dataset': str(ds_dir)}))
    top1 = float((logits.argmax(1) == t).mean())
    m = pd.DataFrame({'epoch': range(epochs), 'train_loss': np.linspace(2, 1, epochs), 'valid_loss': np.linspace(1.9, 1.1, epochs),
                      'top1': np.linspace(0.3, top1, epochs), 'top5': np.linspace(0.8, 1, epochs), 'seconds': 700.0})
    m.to_csv(run / 'metrics.csv', index=False)
    if summary:
        (run / 'summary.json').write_text(json.dumps(dict(
            dataset=str(ds_dir), arch='focalnet_tiny_srf', preset='fast', top1=top1,
            top5=topk_accuracy(logits, t, 5), train_seconds=700.0 * epochs, images=int((ds.split == 'train').sum()),
            epochs=epochs, valid_images=len(t))))
    return run, ds_dir


@pytest.fixture(scope='module')
def bcn_areas(fixtures_dir):
    return load_areas(fixtures_dir / 'bcn' / 'districtes.geojson')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, bcn_areas):
    root = tmp_path_factory.mktemp('runs')
    return [make_run(root, bcn_areas, seed=0, name='mapillary-T')[0],
            make_run(root, bcn_areas, seed=1, acc=0.4, epochs=4, name='flickr-T', source='flickr')[0]]


def png_ok(path, min_bytes=5_000):
    "A PNG that exists, is not tiny and is not one flat colour."
    path = Path(path)
    assert path.exists() and path.stat().st_size > min_bytes, path
    with Image.open(path) as im:
        assert im.format == 'PNG' and min(im.size) > 100
        assert np.asarray(im.convert('L')).std() > 5, f'{path} is blank'


# ------------------------------------------------------------------------------------------------ reading
def test_reference_csv_multiline_vectors(reference_csv):
    with pytest.warns(UserWarning, match='no image in the file'):
        p = read_predictions(reference_csv)
    assert p.classes == ['Ciutat Vella', 'Eixample', 'Gràcia', 'Les Corts', 'Sant Martí', 'class 5']
    assert p.ids.tolist() == ['147793', '179147', '170212', '180269', '167365']
    assert p.targets.tolist() == [4, 3, 0, 2, 1]
    assert p.logits.shape == (5, 6)
    np.testing.assert_allclose(p.logits[0], [1.4667969, 1.3476562, 0.7890625, -1.4755859, -0.40673828, -2.3652344])
    np.testing.assert_allclose(p.logits[2], [2.6269531, 0.98486328, 0.36206055, -0.81884766, -0.032501221, -1.5498047])
    assert p.preds.tolist() == [0, 3, 0, 2, 4]            # = the file's `best prediction`
    assert topk_accuracy(p.logits, p.targets) == pytest.approx(3 / 5)
    assert p.paths[3] == 'mapillary/val/Gràcia/180269.jpeg'
    f = p.frame()
    assert f.loc[0, 'true'] == 'Sant Martí' and f.loc[0, 'predicted'] == 'Ciutat Vella' and not f.loc[0, 'correct']


def test_reference_csv_with_classes_and_errors(reference_csv, tmp_path):
    names = ['Ciutat Vella', 'Eixample', 'Gràcia', 'Les Corts', 'Sant Martí', 'Sants-Montjuïc']
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert read_predictions(reference_csv, classes=names).classes == names
    with pytest.raises(ValueError, match='is folder'):
        read_predictions(reference_csv, classes=names[::-1])
    bad = tmp_path / 'ragged.csv'
    bad.write_text(REFERENCE_CSV.replace('-2.015625  ]', ']'), encoding='utf-8')
    with pytest.raises(ValueError, match='different lengths'):
        read_predictions(bad)
    bad.write_text(REFERENCE_CSV.replace('"[-0.76904297', '"(-0.76904297'), encoding='utf-8')
    with pytest.raises(ValueError, match='row 1'):
        read_predictions(bad)
    bad.write_text(REFERENCE_CSV.replace('Les Corts/179147.jpeg,3', 'Les Corts/179147.jpeg,4'), encoding='utf-8')
    with pytest.raises(ValueError, match='one to one'):
        read_predictions(bad)
    with pytest.raises(FileNotFoundError, match='no predictions'):
        read_predictions(tmp_path / 'nowhere')


def test_run_predictions_parquet(runs):
    p = read_predictions(runs[0])
    d = pd.read_parquet(runs[0] / 'predictions.parquet')
    assert p.ids.tolist() == d.id.tolist() and p.targets.tolist() == d.target.tolist()
    assert p.classes == json.loads((runs[0] / 'classes.json').read_text())
    assert topk_accuracy(p.logits, p.targets) == pytest.approx(json.loads((runs[0] / 'summary.json').read_text())['top1'])
    assert read_predictions(runs[0] / 'predictions.parquet').logits.shape == p.logits.shape


# ------------------------------------------------------------------------------------------------ metrics, by hand
def test_topk_accuracy_hand_values():
    s = np.array([[3.0, 1.0, 0.5, 0.1], [0.2, 2.0, 2.5, 0.0], [1.0, 0.9, 0.1, 2.2]])
    t = np.array([0, 1, 1])   # ranks 1, 2, 3
    assert [topk_accuracy(s, t, k) for k in (1, 2, 3, 4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert topk_accuracy(torch.tensor(s, dtype=torch.float16), torch.tensor(t), 2) == pytest.approx(2 / 3)
    # ties: target tied with one other class for the top: half a hit at k=1, a full hit at k=2
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), [0], 1) == pytest.approx(0.5)
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), [0], 2) == pytest.approx(1.0)
    assert topk_accuracy(np.zeros((4, 8)), [0, 1, 2, 3]) == pytest.approx(1 / 8)
    assert softmax(np.log([[1.0, 3.0]])) == pytest.approx(np.array([[0.25, 0.75]]))
    with pytest.raises(ValueError, match='in 0..3'):
        topk_accuracy(s, [0, 1, 4])
    with pytest.raises(ValueError, match='at least 1'):
        topk_accuracy(s, t, 0)


def test_confusion_report_majority_hand_values():
    t, p = [0, 0, 1, 1, 2], [0, 1, 1, 1, 1]
    cm = confusion(t, p, ['a', 'b', 'c'])
    assert cm.to_numpy().tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert list(cm.index) == ['a', 'b', 'c'] and cm.index.name == 'true' and cm.columns.name == 'predicted'
    assert confusion(t, p, ['a', 'b', 'c'], normalize='true').to_numpy()[0].tolist() == [0.5, 0.5, 0.0]
    r = per_class_report(t, p, ['a', 'b', 'c']).set_index('class')
    assert r.loc['a'].precision == 1 and r.loc['a'].recall == 0.5 and r.loc['a'].f1 == pytest.approx(2 / 3)
    assert r.loc['b'].precision == 0.5 and r.loc['b'].recall == 1 and r.loc['b'].predicted == 4
    assert r.loc['c'].tolist() == [1, 0, 0, 0, 0]
    assert majority_baseline(['x', 'y', 'y', 'z']) == 0.5
    assert majority_baseline([0, 0, 1, 2], train=[2, 2, 2, 0]) == 0.25
    # the paper's ~28%: Sants-Montjuïc's 5,070 of the Flickr table's 18,169 images (Fig. 2a)
    flickr = {'Sants-Montjuïc': 5070, 'Ciutat Vella': 4017, 'Eixample': 3170, 'Gràcia': 1888, 'Les Corts': 918,
              'Horta-Guinardó': 864, 'Sant Andreu': 651, 'Sant Martí': 603, 'Sarrià-Sant Gervasi': 525, 'Nou Barris': 463}
    assert round(majority_baseline(np.repeat(list(flickr), list(flickr.values()))), 3) == 0.279


def test_calibration_hand_values():
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.65, 0.35], [0.55, 0.45]])
    t = [0, 1, 0, 0]          # the 0.85 one is wrong
    r = reliability(probs, t, bins=10, from_logits=False)
    used = r[r.images > 0]
    assert used.lo.round(1).tolist() == [0.5, 0.6, 0.8, 0.9] and used.accuracy.tolist() == [1, 1, 0, 1]
    assert expected_calibration_error(probs, t, bins=10, from_logits=False) == pytest.approx((0.05 + 0.85 + 0.35 + 0.45) / 4)
    assert expected_calibration_error(probs, t, bins=2, from_logits=False) == pytest.approx(0.0)  # 0.75 conf, 0.75 acc
    # (lo, hi] bins: a confidence of exactly 0.6 belongs to (0.5, 0.6]
    assert reliability(np.array([[0.6, 0.4]]), [0], bins=10, from_logits=False).images.tolist()[5] == 1
    # logits: two classes at +-log(3)/2 give 0.75 confidence
    lg = np.array([[np.log(3) / 2, -np.log(3) / 2]] * 4)
    assert expected_calibration_error(lg, [0, 0, 0, 1], bins=4) == pytest.approx(0.0)
    assert expected_calibration_error(lg, [0, 0, 0, 0], bins=4) == pytest.approx(0.25)


def test_distances_hand_values():
    areas = squares()
    lon, lat = lonlat([430_700, 430_500, 431_200, 432_500], [4_580_500, 4_581_500, 4_580_100, 4_580_500])
    km = district_distance_km(lat, lon, ['East', 'West', 'East', 'West'], areas, crs=25831)
    assert km == pytest.approx([0.3, 0.5, 0.0, 1.5], abs=1e-6)
    assert district_distance_km(lat, lon, [1, 0, 1, 0], areas) == pytest.approx([0.3, 0.5, 0.0, 1.5], abs=2e-3)
    with pytest.raises(ValueError, match='not among the areas'):
        district_distance_km(lat, lon, ['East', 'North', 'East', 'East'], areas)
    # geo_errors: photos 0 and 2 in West/East, predicted East/East; 1 km from the truth = 0 when right
    pred = Predictions(['a', 'b', 'c'], [0, 1, 1], [[0.0, 2.0], [0.0, 2.0], [2.0, 0.0]], ['West', 'East'])
    ds = pd.DataFrame({'id': ['a', 'b', 'c', 'zz'], 'lat': [lat[0], lat[2], lat[2], 0.0], 'lon': [lon[0], lon[2], lon[2], 0.0]})
    e = geo_errors(pred, ds, areas, crs=25831)
    assert e.km.tolist() == pytest.approx([0.3, 0.0, 0.2], abs=1e-6)   # c: in East (200 m from West), predicted West
    assert e.correct.tolist() == [False, True, False]
    g = geo_metrics(e)
    assert g['median_km'] == pytest.approx(0.2) and g['mean_km'] == pytest.approx(0.5 / 3)
    assert g['within_1km'] == 1.0 and g['median_km_wrong'] == pytest.approx(0.25)
    g = geo_metrics(pd.DataFrame({'km': [0, 0, 0.5, 2.0], 'correct': [True, True, False, False]}))
    assert (g['median_km'], g['mean_km'], g['within_1km'], g['median_km_wrong']) == pytest.approx((0.25, 0.625, 0.75, 1.25))
    with pytest.raises(ValueError, match='none of the 3 predicted ids'):
        geo_errors(pred, ds.assign(id=['p', 'q', 'r', 's']), areas)
    with pytest.warns(UserWarning, match='1 of 3 predictions have no location'):
        assert len(geo_errors(pred, ds[ds.id != 'b'], areas)) == 2


def test_evaluate_on_a_run(runs, bcn_areas):
    p = read_predictions(runs[0])
    ds_dir = Path(json.loads((runs[0] / 'source.json').read_text())['dataset'])
    ds = pd.read_parquet(ds_dir / 'dataset.parquet')
    ev = evaluate(p, ds, bcn_areas)
    assert ev['top1'] == pytest.approx(np.mean(p.preds == p.targets))
    train_major = ds[ds.split == 'train'].district.value_counts().idxmax()
    assert ev['majority'] == pytest.approx(np.mean(np.array(p.classes)[p.targets] == train_major))
    assert ev['within_1km'] >= ev['top1'] and ev['median_km_wrong'] > 0
    probs = softmax(p.logits)
    assert ev['nll'] == pytest.approx(-np.log(probs[np.arange(len(p)), p.targets]).mean())


# ------------------------------------------------------------------------------------------------ tables and figures
def test_table1_and_names(runs, tmp_path):
    assert [training_time(s) for s in (42, 38 * 60, 93 * 60, 548 * 60, 927 * 60)] == \
           ['42s', '38mins', '1h 33mins', '9h 08mins', '15h 27mins']
    assert model_name('focalnet_small_srf') == 'FocalNet-S' and model_name('focalnet_base_lrf') == 'FocalNet-B (lrf)'
    md = results_markdown(PAPER_TABLE1)
    assert '| FocalNet-T | Flickr    | 32.1%            | 83.5%            | 38mins          |' in md
    t = results_table(runs)
    assert t.model.tolist() == ['FocalNet-T', 'FocalNet-T']
    assert t.dataset.tolist() == ['Mapillary', 'Flickr']   # what each learned from, not its folder's name
    assert t.training_time.tolist() == ['35mins', '47mins'] and t.finished.all()
    # an unfinished run (no summary.json yet) is read from its metrics.csv
    unfinished, _ = make_run(tmp_path, load_areas(runs[0] / 'areas.geojson'), summary=False, epochs=2, name='half')
    u = results_table([unfinished]).iloc[0]
    assert not u.finished and u.epochs == 2 and u.train_seconds == 1400 and u.top1 == pytest.approx(
        pd.read_csv(unfinished / 'metrics.csv').top1.iat[-1])


def test_every_figure_is_drawn(runs, bcn_areas, tmp_path):
    p = read_predictions(runs[0])
    ds_dir = Path(json.loads((runs[0] / 'source.json').read_text())['dataset'])
    ds = pd.read_parquet(ds_dir / 'dataset.parquet')
    figs = {
        'confusion': plot_confusion(confusion(p.targets, p.preds, p.classes, normalize='true')).figure,
        'confusion_counts': plot_confusion(confusion(p.targets, p.preds, p.classes)).figure,
        'reliability': plot_reliability(p.logits, p.targets).figure,
        'geo_errors': plot_geo_errors(geo_errors(p, ds, bcn_areas), bcn_areas).figure,
        'distribution': plot_distribution(ds, bcn_areas, title='test'),
        'curves': plot_curves(runs),
        'correct': show_predictions(p, ds_dir, correct=True, n=4),
        'wrong': show_predictions(p, ds_dir, correct=False, n=4),
    }
    for name, fig in figs.items():
        fig.savefig(tmp_path / f'{name}.png', dpi=80)
        png_ok(tmp_path / f'{name}.png')
    grid = figs['wrong']
    titled = [ax for ax in grid.axes if ax.get_title()]
    assert len(titled) == 4 and all(ax.images for ax in titled)
    assert all(ax.get_title().startswith('true: ') and '\npred: ' in ax.get_title() for ax in titled)
    with pytest.raises(ValueError, match='not a dataset folder'):
        show_predictions(p, tmp_path)


def test_splits_table_and_checks(runs, tmp_path):
    t = splits_table({'random': runs[0], 'other': runs[1]})
    assert list(t.index) == ['random', 'other']
    assert t.loc['random', 'top1'] == pytest.approx(json.loads((runs[0] / 'summary.json').read_text())['top1'])
    assert {'sequence_leak_pct', 'median_nearest_train_m', 'unseen_classes', 'majority'} <= set(t.columns)
    assert t.loc['random', 'sequence_leak_pct'] > 0   # the fixture's sequences straddle the split
    ds_dir = Path(json.loads((runs[0] / 'source.json').read_text())['dataset'])
    # a run given for a split it was not trained on is refused before anything is trained
    with pytest.raises(ValueError, match='not trained on this split'):
        compare_splits(ds_dir, out=tmp_path / 'splits', runs={'random': runs[0]}, hows=('random',))


# ------------------------------------------------------------------------------------------------ end to end
def test_analyze_cli_on_run_folders(runs, tmp_path):
    out = tmp_path / 'analysis'
    r = geoloc('analyze', *runs, '--out', out, '--n', 4)
    assert r.returncode == 0, r.stderr
    assert 'mapillary-T' in r.stdout and 'files ->' in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ['curves.pdf', 'curves.png', 'flickr-T', 'mapillary-T', 'metrics.csv',
                                                     'metrics.md', 'table1.csv', 'table1.md']
    per_run = ['confusion.csv', 'confusion.pdf', 'confusion.png', 'correct.png', 'distribution.pdf', 'distribution.png',
               'geo_errors.pdf', 'geo_errors.png', 'per_class.csv', 'per_class.md', 'predictions.csv', 'reliability.pdf',
               'reliability.png', 'wrong.png']
    for name in ('mapillary-T', 'flickr-T'):
        assert sorted(p.name for p in (out / name).iterdir()) == per_run
        for png in (out / name).glob('*.png'): png_ok(png)
    png_ok(out / 'curves.png')
    m = pd.read_csv(out / 'metrics.csv', index_col='run')
    for run in runs:
        p = read_predictions(run)
        assert m.loc[run.name, 'top1'] == pytest.approx(np.mean(p.preds == p.targets))
        assert m.loc[run.name, 'images'] == len(p)
    t = pd.read_csv(out / 'table1.csv')
    assert t.model.tolist() == ['FocalNet-T', 'FocalNet-T']
    assert '| Model ' in (out / 'table1.md').read_text() and '35mins' in (out / 'table1.md').read_text()
    cm = pd.read_csv(out / 'mapillary-T' / 'confusion.csv', index_col=0)
    assert cm.to_numpy().sum() == len(read_predictions(runs[0]))
    preds = pd.read_csv(out / 'mapillary-T' / 'predictions.csv')
    assert (preds.loc[preds.correct, 'km'] == 0).all() and (preds.km >= 0).all()


def test_analyze_cli_on_reference_csv(reference_csv, tmp_path):
    out = tmp_path / 'ref'
    r = geoloc('analyze', reference_csv, '--out', out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (out / 'mapillary_eval').iterdir()) == [
        'confusion.csv', 'confusion.pdf', 'confusion.png', 'per_class.csv', 'per_class.md', 'predictions.csv',
        'reliability.pdf', 'reliability.png']
    assert pd.read_csv(out / 'table1.csv').top1.tolist() == [pytest.approx(0.6)]
    png_ok(out / 'mapillary_eval' / 'confusion.png')


def test_analyze_cli_errors(tmp_path, capsys):
    assert main(['analyze', str(tmp_path / 'no-such-run'), '--out', str(tmp_path / 'o')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('geoloc analyze: ') and 'not a run folder' in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):   # argparse: RUN is required
        main(['analyze', '--out', str(tmp_path / 'o')])


def test_a_real_training_run_is_analysed(tmp_path):
    "The training stage's own run folder (a tiny CPU FocalNet) goes through `analyze` unchanged."
    from geoloc.sim import toy_dataset
    from geoloc.train import TrainConfig, train
    torch.set_num_threads(1)   # 2 shared cores: two threads fight and run many times slower
    data = toy_dataset(tmp_path / 'toy', n_classes=4, per_class=20, size=40)
    cfg = TrainConfig.fast('focalnet_pico_srf', epochs=2, warmup_epochs=1, bs=16, size=32, resize=40, mixup=0, cutmix=0,
                           randaug='', reprob=0, compile=False, workers=0)
    run = train(data, cfg, tmp_path / 'run', progress=False)
    files = analyze([run], tmp_path / 'analysis', n=4)
    names = {p.name for p in files}
    assert {'table1.md', 'metrics.csv', 'curves.png', 'confusion.png', 'geo_errors.png', 'distribution.png',
            'wrong.png', 'correct.png', 'reliability.png'} <= names
    m = pd.read_csv(tmp_path / 'analysis' / 'metrics.csv', index_col='run')
    assert m.loc['run', 'top1'] == pytest.approx(json.loads((run / 'summary.json').read_text())['top1'], abs=1e-6)
    assert results_table([run]).model.iat[0] == 'FocalNet-pico'
