"""NACLIP: training-free open-vocabulary semantic segmentation on any open_clip ViT."""

from naclip.pamr import pamr
from naclip.segmenter import Prediction, Segmenter

__version__ = "0.1.0"
__all__ = ["Prediction", "Segmenter", "pamr", "__version__"]
