"""Geolocate outdoor photos inside a city: crawl Mapillary and Flickr, label by district, train FocalNets, analyse, predict.

Modules:

- `geoloc.analysis`: The paper's tables and figures from any run (Table 1, Figs. 2-5), and the geolocation metrics it lacked: distance to the predicted district, calibration, leakage beside each split's numbers; one report folder per set of runs.
- `geoloc.cli`: The `geoloc` command: one subcommand per pipeline stage.
- `geoloc.crawlio`: Crawl machinery shared by the Mapillary and Flickr crawlers: a retrying JSON client that knows how the Graph and Flickr APIs fail, a crash-safe journal of finished tasks, a concurrent task runner that resumes from it, and the crawl outline both crawlers follow (one `crawl.json` schema, settings pinned per folder, records saved by one writer).
- `geoloc.data`: Items, batches, decoding (nvJPEG on a GPU, the CPU elsewhere), timm's crops, flips, RandAugment and random erasing on whole batches, loaders with persistent workers and a prefetching producer: shared by training and prediction.
- `geoloc.emulator`: The API stand-ins' old address: everything here moved to `geoloc.sim` (kept so that existing imports work).
- `geoloc.files`: Files that are never half-written: one atomic writer for every stage, JSON read back with errors that name the file, and folders that geoloc deletes only when it made them itself.
- `geoloc.flickr`: Every geotagged Flickr photo inside a city, exactly once, past the 4000-results cap; and the paper's keyword crawl, reproduced.
- `geoloc.geojson`: Load a city's districts or neighbourhoods as clean, named polygons in EPSG:4326: from files, URLs, open-data portals, OpenStreetMap, or a synthetic city.
- `geoloc.images`: Download, verify and resize a dataset's images: concurrent, resumable, each failure kept with its reason, expired Mapillary URLs re-resolved.
- `geoloc.labeling`: Turn crawl records into a training set: each photo's district, clean rows, train/valid splits that do not leak, and the dataset folder every later stage reads.
- `geoloc.mapillary`: Crawl every Mapillary image inside a city's polygon from the Graph API's capped bbox search, recursively, concurrently and crash-safely, with all metadata from the search itself.
- `geoloc.metrics`: The numbers of a run: the paper's top-k accuracy, its validation predictions (or the authors' own eval CSV), confusion, per-class scores, the majority baseline, distances to the predicted district, calibration, intervals that resample whole sequences.
- `geoloc.net`: The one HTTP layer of geoloc: one session factory, one User-Agent, one `redact`, the services' addresses, typed errors, and fetches that end on time and refuse what is too big.
- `geoloc.osm`: OpenStreetMap's administrative boundaries of a place, through osmnx (an optional dependency: `geoloc-city[osm]`).
- `geoloc.outputs`: Write a prediction table as a responder and a GIS need it: `predictions.csv`, `predictions.geojson`, KML and GeoPackage through geopandas' drivers, and `map.html`, one self-contained page with each photo at its estimate inside its uncertainty circle, coloured by confidence; appending to earlier answers, never overwriting them.
- `geoloc.photos`: Read and decode the photos a responder is handed (files, folders, URLs; JPEG, PNG, WebP, HEIC from phones, GIF, BMP, TIFF), upright, at the model's size, refusing hostile inputs cheaply; and read the GPS position a photo may carry in its EXIF.
- `geoloc.pipeline`: One command from a city's name to a report: crawl both sources, label, split, download, train, analyse, place new photos; resumable stage by stage. `geoloc demo` runs it offline on the API stand-ins.
- `geoloc.predict`: Place new photos on a city's map with a trained district classifier: the top districts with calibrated probabilities, a point estimate with an uncertainty radius, "unsure" where the model is, the photo's own GPS as a check; as CSV, GeoJSON, KML, GeoPackage and a map that a responder opens in a browser.
- `geoloc.recipe`: Everything that decides a training run in one dataclass, `TrainConfig`, with its presets (`paper`: what produced the paper's Table 1; `fast`: the same made correct and fast; `finetune`: from ImageNet weights), where each departs from the paper's text, and the learning-rate schedule.
- `geoloc.retrieval`: An index of the training photos' embeddings (the model's penultimate features, fp16) with their coordinates; a new photo's estimate is the similarity-weighted place of its nearest training photos inside the predicted district, with a radius fitted so that it holds the true place for a stated share of validation photos.
- `geoloc.sim.city`: A synthetic city: named, irregular, Voronoi-style districts inside a wobbly outline, deterministic by seed, in the shape `geoloc.geojson.load_areas` returns (`name`, `geometry`, EPSG:4326). For tests, demos and the stand-ins: it exists everywhere, offline, and looks like a real city's district layer.
- `geoloc.sim.emulator`: The two stand-ins started together on 127.0.0.1, in threads or a child process, with their counters and request log; and `geoloc emulator`, which serves them from the command line.
- `geoloc.sim.faults`: Fault injection for the stand-ins: every decision is a hash of (seed, request, attempt), so that two runs with the same seed see the same faults and a retry re-rolls.
- `geoloc.sim.flickr`: The Flickr REST stand-in: flickr.photos.search (text, tags, bbox, dates, geo filters, sorts, the 4000 cap, the 12-hour rule of unlimited geo queries, numbers as strings), getSizes, test.echo, static photo URLs; JSON or XML.
- `geoloc.sim.generate`: Synthetic worlds over any city's areas: Mapillary sequences along street grids, Flickr photos clustered at hot spots, each with real-looking metadata; and the paper's Barcelona at its published sizes.
- `geoloc.sim.mapillary`: The Mapillary Graph API v4 stand-in: bbox search (capped at 2000, time windows, filters), entity lookups and signed, expiring thumbnail URLs, with the Graph error shape.
- `geoloc.sim.osm`: A local stand-in of OpenStreetMap's Nominatim and Overpass endpoints, for the `osm:<place>` boundary source.
- `geoloc.sim.records`: What a crawl of a synthetic world returns, in the project's record schema: every image of a bounding-box crawl (outside the city too), Flickr photos found twice (by two keyword searches), for lessons and tests of labeling.
- `geoloc.sim.render`: How the stand-ins' images look: district palettes, street-level frames seen from a moving car, Flickr-like photos of landmarks and people, and the JPEG writer that gives them real photos' sizes and entropy at the cost of a byte copy.
- `geoloc.sim.server`: HTTP plumbing shared by both stand-ins: responses, a threading server that can end its keep-alive connections, and the request pipeline (routing, faults, counters, the request log, one write per response).
- `geoloc.sim.toy`: Small dataset folders for training lessons, tests and benchmarks, in the labeling stage's layout (`dataset.parquet`, `areas.geojson`, `images/`), written through `geoloc.labeling`'s own writer.
- `geoloc.sim.world`: The world the API stand-ins serve: Mapillary images and Flickr photos with their metadata, their deterministic JPEGs, and the indexes the servers search. Built by `geoloc.sim.generate`.
- `geoloc.splits`: Train/validation splits of a dataset and the leakage each leaves: the paper's own split (the authors' download loop), random, by sequence, and spatial with a buffer; k folds; how much each split leaks.
- `geoloc.study`: A declared set of experiments (splits x sources x models x seeds x folds) trained on one dataset folder, resumable per experiment, with one report: every table with 95% intervals from a bootstrap over whole sequences, the leakage of every split, paper-ready figures.
- `geoloc.train`: Train a FocalNet district classifier with fastai: the paper's recipe as its reference trainer really ran, and the same recipe made fast on one modern GPU.
- `geoloc.weights`: Read a checkpoint (safetensors, a torch state dict, a timm or FocalNet checkpoint, a run's model folder, or a timm pretrained tag) into a model whose classifier head is new; write and read the model folder a run shares: `model.safetensors`, `config.json`, `classes.json`, `areas.geojson`."""

__version__ = "0.1.0"
