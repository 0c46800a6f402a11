"""vlseg: vision-language referring segmentation for medical images."""

__version__ = "0.1.0"
