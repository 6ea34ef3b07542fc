"""Geolocate outdoor photos inside a city: crawl Mapillary and Flickr, label by district, train FocalNets, analyse, predict.

Modules:

- `geoloc.cli`: The `geoloc` command: one subcommand per pipeline stage."""

__version__ = "0.1.0"
