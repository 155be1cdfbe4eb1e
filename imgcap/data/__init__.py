"""Data layer: annotation readers, annotations, vocabulary, datasets, transforms, synthetic shapes, feature cache, DataModule."""

from imgcap.data.annotations import Annotations, detect_layout, load_annotations, seeded_split
from imgcap.data.datamodule import CaptionDataModule, Flickr8kDataModule
from imgcap.data.shapes import generate_shapes, is_complete_shapes_dataset
from imgcap.data.transforms import eval_transform, load_image, train_transform
from imgcap.vocab import Vocabulary

__all__ = [
    "Annotations",
    "CaptionDataModule",
    "Flickr8kDataModule",
    "Vocabulary",
    "detect_layout",
    "eval_transform",
    "generate_shapes",
    "is_complete_shapes_dataset",
    "load_annotations",
    "load_image",
    "seeded_split",
    "train_transform",
]
