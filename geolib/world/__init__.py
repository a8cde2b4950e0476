"""The synthetic world: generation (`generate`), rendering, export to the dataset layouts,
its baselines, and the build that ties them together (`build.build_world`, `python -m geolib world`)."""
