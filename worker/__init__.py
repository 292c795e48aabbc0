"""signfeed: pull data from web APIs on a schedule and render it into feeds for signage screens."""

__version__ = "0.1.0"
