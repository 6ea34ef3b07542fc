"""Geolocate outdoor photos inside a city: crawl Mapillary and Flickr, label by district, train FocalNets, analyse, predict.

Modules:

- `geoloc.cli`: The `geoloc` command: one subcommand per pipeline stage.
- `geoloc.crawlio`: Crawl machinery shared by the Mapillary and Flickr crawlers: a retrying JSON client, a crash-safe journal of finished tasks, and a concurrent task runner that resumes from the journal.
- `geoloc.emulator`: Local stand-ins of the Mapillary Graph v4 and Flickr REST APIs, serving a synthetic world of images."""

__version__ = "0.1.0"
