"""Training-free open-vocabulary semantic segmentation on any open_clip ViT: NACLIP and the methods around it."""

from naclip.methods import METHODS, get_method
from naclip.pamr import pamr
from naclip.segmenter import Prediction, Segmenter
from naclip.settings import Settings

__version__ = "0.1.0"
__all__ = ["METHODS", "Prediction", "Segmenter", "Settings", "get_method", "pamr", "__version__"]
