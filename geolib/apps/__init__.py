"""Apps: the commands of `python -m geolib`, the notebooks' helpers, reports, benchmarks and
figures, and the demo galleries of notebook 05 (`gallery`: it renders new photos of the world).
Nothing in the library imports this layer; it may import all of it."""
