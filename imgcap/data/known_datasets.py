"""What the named datasets look like on disk and where they come from, for the error a user
meets when ``data=flickr30k`` or ``data=coco_karpathy`` finds nothing under ``data.root``.

Keyed by the name of the dataset's annotation file (what the data config sets), so the message
speaks of the dataset and its files, not of a config key the user never set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_KARPATHY_SPLITS = (
    "caption_datasets.zip from cs.stanford.edu/people/karpathy/deepimagesent (Karpathy's splits)"
)


@dataclass(frozen=True)
class KnownDataset:
    name: str
    config: str  # the data config that selects it
    image_folders: tuple[str, ...]  # any one of them (COCO: all of them)
    all_folders: bool
    images_from: str
    annotations_from: str


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "dataset_flickr30k.json": KnownDataset(
        "Flickr30k",
        "flickr30k",
        ("flickr30k-images", "Images"),
        False,
        "the Flickr30k request form (shannon.cs.illinois.edu/DenotationGraph)",
        _KARPATHY_SPLITS,
    ),
    "dataset_coco.json": KnownDataset(
        "MS-COCO 2014",
        "coco_karpathy",
        ("train2014", "val2014"),
        True,
        "images.cocodataset.org/zips/train2014.zip and val2014.zip",
        _KARPATHY_SPLITS,
    ),
    "dataset_flickr8k.json": KnownDataset(
        "Flickr8k",
        "flickr8k",
        ("Images", "Flicker8k_Dataset"),
        False,
        'Kaggle ("adityajn105/flickr8k") or the original release',
        _KARPATHY_SPLITS,
    ),
}


def missing_dataset_message(root: Path, annotation_file: Path) -> str | None:
    """One line for a known dataset whose annotation file is missing: which of its files are
    missing, the layout expected under ``root`` and where the files come from; None for an
    annotation file this module does not know."""
    known = KNOWN_DATASETS.get(annotation_file.name)
    if known is None:
        return None
    missing = [annotation_file.name]
    folders = [f for f in known.image_folders if not (root / f).is_dir()]
    if known.all_folders:
        missing += [f"{f}/" for f in folders]
    elif len(folders) == len(known.image_folders):
        missing.append(f"{known.image_folders[0]}/")
    images = (
        " and ".join(f"{root}/{f}/" for f in known.image_folders)
        if known.all_folders
        else f"{root}/{known.image_folders[0]}/*.jpg"
    )
    where = (
        "does not exist"
        if not root.is_dir()
        else "are missing"
        if len(missing) > 1
        else "is missing"
    )
    subject = f"{root}" if not root.is_dir() else f"{', '.join(missing)} under {root}"
    return (
        f"{known.name} (data={known.config}) not found: {subject} {where}. Expected {images} "
        f"and {root}/{annotation_file.name}; the images come from {known.images_from}, "
        f"{annotation_file.name} from {known.annotations_from}. Unpack them there or pass "
        "data.root=/path/to/the/dataset"
    )
