"""geolocal toolkit."""
