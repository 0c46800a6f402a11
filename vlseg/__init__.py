"""vlseg: vision-language referring segmentation for medical images.

>>> import vlseg
>>> model = vlseg.load()                       # the embedded default, phantom-tiny
>>> result = model.segment("ct.png", "the hepatic lesion")   # doctest: +SKIP
>>> result.present, result.area_px, result.n_components      # doctest: +SKIP
"""

from vlseg.inference import ClassificationResult, EncodedImage, SegmentationResult
from vlseg.predictor import Segmenter, load
from vlseg.registry import list_models
from vlseg.serving import ServingConfig

__version__ = "0.1.0"
__all__ = [
    "load",
    "list_models",
    "Segmenter",
    "EncodedImage",
    "SegmentationResult",
    "ClassificationResult",
    "ServingConfig",
    "__version__",
]
