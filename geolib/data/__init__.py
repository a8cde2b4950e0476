"""Data layer: decoding images, the dataset layouts and their loaders, data checks, the release
format, and the image transforms models and figures share (the evaluation `Preprocess`, the SAFA
polar transform). It imports only core modules, so any model, metric or app can read data."""
