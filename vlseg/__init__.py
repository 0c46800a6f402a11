"""vlseg: vision-language referring segmentation for medical images.

>>> import vlseg
>>> model = vlseg.load()                       # the embedded default, phantom-tiny
>>> result = model.segment("ct.png", "the hepatic lesion")   # doctest: +SKIP
>>> result.present, result.area_px, result.n_components      # doctest: +SKIP
>>> vol = model.segment("ct.nii.gz", "the hepatic lesion")   # doctest: +SKIP
>>> vol.volume_ml, vol.diameters_mm, vol.slices              # doctest: +SKIP
"""

from vlseg.data.volume_io import Volume, read_volume
from vlseg.inference import ClassificationResult, EncodedImage, SegmentationResult
from vlseg.predictor import Segmenter, load
from vlseg.registry import list_models
from vlseg.serving import ServingConfig
from vlseg.volume import EncodedVolume, VolumeResult

__version__ = "0.1.0"
__all__ = [
    "load",
    "list_models",
    "Segmenter",
    "EncodedImage",
    "SegmentationResult",
    "ClassificationResult",
    "ServingConfig",
    "Volume",
    "EncodedVolume",
    "VolumeResult",
    "read_volume",
    "__version__",
]
