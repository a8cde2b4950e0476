"""Retrieval layer: saved gallery indexes (`index.GalleryIndex`) and where-was-this-photo-taken
(`localize`): what a trained model is used for once training is done."""
