"""The LightningDataModule: datasets and loaders for any caption dataset, in Lightning's hooks.

Which dataset is a matter of configuration: ``data.root`` and the annotation reader
(``data.layout``, detected by default; see :mod:`imgcap.data.readers`), with
``data.annotations_file`` / ``data.image_dir`` when the files are not where the reader looks.

What the module needs is given when it is built: the settings (checked at once,
:mod:`imgcap.data.settings`), the vocabulary when it must be a trained model's, and the frozen
encoder that fills the feature cache (``data.cache_features``). The jobs around it live in their
own modules: the synthetic set (:mod:`imgcap.data.synthetic`), the image check
(:mod:`imgcap.data.image_checks`), the vocabulary cache (:mod:`imgcap.data.vocab_cache`), the
feature caches and their device (:mod:`imgcap.data.feature_stores`) and the training order a
checkpoint resumes (:class:`~imgcap.data.sampler.TrainingOrder`).

The run builds it in one direction (:mod:`imgcap.run.builders`): the vocabulary first
(:meth:`prepare_vocabulary`, the checks included), the model from it, then the Trainer runs
the hooks once:

* ``prepare_data`` (once per machine, on local rank zero; the other ranks wait): the synthetic
  set and the checks (done already in the same process: cached), and the feature caches of the
  splits the Trainer is about to use, computed on the Trainer's device (the GPU when training on
  one).
* ``setup(stage)`` (every process): build the datasets for the stage (reading the feature cache,
  or building it when setup runs without a Trainer; preloading pixels when enabled).

With cached features, ``data.resident`` keeps them in memory (on the training device, or in host
memory) and the loaders yield whole batches gathered by index (:mod:`imgcap.data.resident`).

All user mistakes surface here as one-line :class:`~imgcap.errors.DataError`, before any
DataLoader worker starts. Nothing is written until every check has passed, and every write is
atomic, so a failed run never damages an earlier vocabulary or cache.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgcap.data.annotations import Annotations, load_annotations
from imgcap.data.cache_location import default_cache_dir
from imgcap.data.datasets import (
    CachedFeatures,
    CaptionEvalDataset,
    CaptionTrainDataset,
    ImageFiles,
    PreloadedImages,
    collate_eval,
    collate_train,
)
from imgcap.data.feature_stores import FeatureStores
from imgcap.data.image_checks import drop_unreadable_images
from imgcap.data.readers import check_layout
from imgcap.data.resident import (
    IndexBatches,
    ResidentEvalBatches,
    ResidentFeatures,
    ResidentTrainBatches,
    as_is,
)
from imgcap.data.sampler import TrainingOrder
from imgcap.data.settings import check_data_settings, resolve_num_workers
from imgcap.data.synthetic import ensure_synthetic
from imgcap.data.transforms import eval_transform, train_transform
from imgcap.data.vocab_cache import load_or_build_vocab, vocab_path
from imgcap.errors import ConfigError, DataError
from imgcap.vocab import Vocabulary

log = logging.getLogger(__name__)

_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}

_NEEDS_ENCODER = (
    "data.cache_features=true needs the frozen encoder: build the data module with "
    "feature_encoder=... and encoder_key=... (or call dm.attach_feature_encoder(...)) before {what}"
)

__all__ = ["CaptionDataModule", "Flickr8kDataModule", "resolve_num_workers"]


class CaptionDataModule(L.LightningDataModule):
    """Any dataset a registered reader can read (Flickr8k in its three layouts, Flickr30k and
    COCO through Karpathy's json, ...) or the generated shapes set.

    Args mirror the ``data.*`` config keys; see the module docstring of
    :mod:`imgcap.data.datasets` for the batch format. ``layout``: ``auto`` (detect) or a reader
    name; ``annotations_file`` / ``image_dir``: the annotation file and the image folder when
    they are not where the reader looks (relative paths are under ``root``). ``cache_dir``:
    the vocabulary and feature caches (None: the user's cache folder, see
    :mod:`imgcap.data.cache_location`; never the dataset folder unless given).
    ``check_splits``: the splits whose images are checked for integrity (None: all; evaluation
    passes the one it scores).

    Given by the run, not by the config: ``vocab``, a vocabulary that defines the word ids (a
    trained model's; None: built from the training captions); ``feature_encoder`` and
    ``encoder_key``, the frozen encoder ((B, 3, S, S) -> (B, P, C)) that fills the feature
    cache and everything its output depends on (part of the cache key).
    """

    def __init__(
        self,
        root: str = "data/flickr8k",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool = True,
        persistent_workers: bool = True,
        image_size: int = 224,
        augment: bool = False,
        min_word_freq: int = 5,
        captions_per_image: str | int = "all",
        max_caption_len: int | None = None,
        preload: bool = False,
        bad_images: str = "error",
        split_seed: int = 0,
        cache_dir: str | None = None,
        cache_features: bool = False,
        limit_train_images: int | None = None,
        synthetic: dict[str, Any] | None = None,
        quiet: bool = False,
        shuffle_seed: int = 0,
        layout: str = "auto",
        annotations_file: str | None = None,
        image_dir: str | None = None,
        check_splits: list[str] | None = None,
        resident: str = "auto",
        vocab: Vocabulary | None = None,
        feature_encoder: torch.nn.Module | None = None,
        encoder_key: dict | None = None,
    ):
        super().__init__()
        self.layout = check_layout(layout)  # an unknown name fails here, before any work
        check_data_settings(
            captions_per_image=captions_per_image,
            resident=resident,
            bad_images=bad_images,
            max_caption_len=max_caption_len,
            batch_size=batch_size,
            image_size=image_size,
        )
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.image_size = image_size
        self.augment = augment
        self.min_word_freq = min_word_freq
        self.captions_per_image = str(captions_per_image)
        self.max_caption_len = max_caption_len
        self.preload = preload
        self.bad_images = bad_images
        self.split_seed = split_seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_features = cache_features
        self.limit_train_images = limit_train_images
        self.synthetic = dict(synthetic) if synthetic else None
        self.quiet = quiet
        self.shuffle_seed = int(shuffle_seed)
        self.annotations_file = annotations_file
        self.image_dir = image_dir
        self.check_splits = list(check_splits) if check_splits is not None else None
        self.resident = resident
        self.stores = FeatureStores(
            self.cache_dir,
            image_size,
            resident,
            self.eval_batch_size,
            self.num_workers,
            quiet,
        )
        self.training_order = TrainingOrder(self.shuffle_seed)

        self.annotations: Annotations | None = None
        self._vocab: Vocabulary | None = vocab
        self.datasets: dict[str, Dataset] = {}
        if feature_encoder is not None:
            self.attach_feature_encoder(feature_encoder, encoder_key or {})

    # ------------------------------------------------------------------ public state

    @property
    def vocab(self) -> Vocabulary | None:
        """The vocabulary: given, or built from the training split (:meth:`vocabulary`)."""
        return self._vocab

    @vocab.setter
    def vocab(self, vocab: Vocabulary) -> None:
        # A given vocabulary (e.g. from a checkpoint) wins: ids must match the trained model.
        self._vocab = vocab
        self.datasets.clear()

    def attach_feature_encoder(self, encoder: torch.nn.Module, encoder_key: dict) -> None:
        """Use ``encoder`` ((B, 3, S, S) -> (B, P, C), frozen) to fill the feature cache.

        For a data module built before its encoder (scripts, benchmarks); a run gives it to the
        constructor. ``encoder_key`` must describe everything its output depends on
        (architecture, weights, grid size...): it is part of the cache key."""
        self.stores.use_encoder(encoder, encoder_key)
        self.datasets.clear()

    def prepare_vocabulary(self) -> Vocabulary:
        """The data work a model needs before it is built, without the feature caches: the
        synthetic set when asked, the checks, and the vocabulary (its cache file written).
        Run once per machine (global rank zero); the other ranks call :meth:`vocabulary`."""
        if self.synthetic is not None:
            ensure_synthetic(self.root, self.synthetic, self.quiet)
        self._load_annotations()  # the checks, also when the vocabulary is given
        return self.vocabulary()

    def vocabulary(self) -> Vocabulary:
        """The vocabulary: the given one, else read from its cache file or built from the
        training captions (checking the annotations and images first)."""
        if self._vocab is None:
            ann = self._load_annotations()
            self._vocab = load_or_build_vocab(ann, self.root, self.cache_dir, self.min_word_freq)
        return self._vocab

    def train_references(self) -> list[list[str]]:
        """For each training image, in split order, all its raw reference captions (e.g. the
        corpus of a CIDEr-D reward's document frequencies). Reads and checks the annotations on
        first use; honours ``limit_train_images`` and images skipped as unreadable."""
        ann = self._load_annotations()
        return [list(ann.captions[name]) for name in ann.splits["train"]]

    def picture(self, image_id: str) -> np.ndarray | None:
        """The (S, S, 3) uint8 crop the encoder sees of an image (the same resize and centre
        crop as the feature cache), read from the dataset's image folder; None when it cannot
        be read."""
        from imgcap.data.transforms import load_image, to_uint8

        try:
            image = load_image(self._load_annotations().image_path(image_id))
        except DataError:
            return None
        return to_uint8(image, int(self.image_size)).permute(1, 2, 0).numpy()

    def vocab_path(self) -> Path:
        """``<cache_dir>/vocab-<hash>.json`` (see :func:`imgcap.data.vocab_cache.vocab_path`)."""
        return vocab_path(self._load_annotations(), self.root, self.cache_dir, self.min_word_freq)

    # ------------------------------------------------------------------ hooks

    def prepare_data(self) -> None:
        self.prepare_vocabulary()
        if self.cache_features and self.stores.has_encoder:
            splits = self._load_annotations().splits
            for split in _STAGE_SPLITS.get(self._trainer_stage(), _STAGE_SPLITS[None]):
                if splits.get(split):
                    self._feature_store(split)

    def setup(self, stage: str | None = None) -> None:
        self.vocabulary()
        for split in _STAGE_SPLITS.get(stage, _STAGE_SPLITS[None]):
            if split not in self.datasets:
                self.datasets[split] = self._make_dataset(split)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def teardown(self, stage: str | None = None) -> None:
        self.wait_for_cache_files()

    def wait_for_cache_files(self) -> None:
        """Features kept in memory are written to disk in the background: finish the files."""
        self.stores.wait_written()

    # ------------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """Where the training order stands: ``{"epoch", "position"}`` (items already trained on
        in that epoch), saved in every checkpoint so a resumed run continues the same order."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        return self.training_order.state(int(trainer.current_epoch), done, self.batch_size)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.training_order.restore(state)

    # ------------------------------------------------------------------ the Trainer's view
    # Lightning tells prepare_data neither the stage nor the device: both are read from the
    # Trainer that runs the hooks (absent when a script calls them directly).

    def _trainer_stage(self) -> str | None:
        """The Trainer's stage (fit, validate, test...) while it runs the hooks, else None."""
        trainer = getattr(self, "trainer", None)
        return trainer.state.fn.value if trainer is not None and trainer.state.fn else None

    def _cache_device(self) -> torch.device | None:
        """Where the feature cache is computed: the Trainer's root device (the GPU), even though
        the model is moved there only later; None without a Trainer (where the encoder is)."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else None

    # ------------------------------------------------------------------ internals

    def _load_annotations(self) -> Annotations:
        if self.annotations is not None:
            return self.annotations
        if self.synthetic is not None and not self.root.exists():
            ensure_synthetic(
                self.root, self.synthetic, self.quiet
            )  # setup() without prepare_data()
        ann = load_annotations(
            self.root, self.split_seed, self.layout, self.annotations_file, self.image_dir
        )
        drop_unreadable_images(ann, self.check_splits, self.bad_images, self.quiet)
        if self.limit_train_images is not None:
            ann.splits["train"] = ann.splits["train"][: self.limit_train_images]
        self.annotations = ann
        return ann

    def _feature_store(self, split: str):
        return self.stores.store(split, self._load_annotations(), self._cache_device())

    def _make_dataset(self, split: str) -> Dataset:
        ann = self._load_annotations()
        ids = ann.splits[split]
        if not ids:
            raise DataError(
                f"{self.root}: the {split} split is empty; check the split lists or the data"
            )
        train = split == "train"
        if self.cache_features:
            if not self.stores.has_encoder:
                raise ConfigError(_NEEDS_ENCODER.format(what="setup"))
            if train and self.augment:
                warnings.warn(
                    "data.augment is ignored with data.cache_features=true (features are precomputed)",
                    stacklevel=2,
                )
            store = self._feature_store(split)
            placement = self.stores.placement
            if placement is not None and placement.mode != "off":
                # (a store that travelled to another process left its memory copy behind)
                store.keep_in_memory(placement.keep_on, placement.pin)
                features = ResidentFeatures(store.resident, placement.device)
                if train:
                    return ResidentTrainBatches(
                        ids,
                        ann.captions,
                        self.vocabulary(),
                        features,
                        self.captions_per_image,
                        self.max_caption_len,
                    )
                return ResidentEvalBatches(ids, ann.captions, features)
            source = CachedFeatures(store)
        elif self.preload:
            source = PreloadedImages(
                ann.image_dir,
                ids,
                self.image_size,
                augment=train and self.augment,
                quiet=self.quiet,
                desc=f"preload ({split})",
            )
        else:
            tf = (
                train_transform(self.image_size, self.augment)
                if train
                else eval_transform(self.image_size)
            )
            source = ImageFiles(ann.image_dir, tf)
        if train:
            return CaptionTrainDataset(
                ids,
                ann.captions,
                self.vocabulary(),
                source,
                self.captions_per_image,
                self.max_caption_len,
            )
        return CaptionEvalDataset(ids, ann.captions, source)

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            if self.cache_features and not self.stores.has_encoder:
                raise ConfigError(_NEEDS_ENCODER.format(what="the loaders"))
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        if isinstance(dataset, ResidentTrainBatches | ResidentEvalBatches):
            return self._index_loader(dataset, batch_size, shuffle)
        # The loader's own generator: making an iterator then draws nothing from the global RNG
        # (which dropout and scheduled sampling use), so resuming a run reproduces it exactly.
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        sampler = (
            self.training_order.sampler(
                len(dataset), getattr(dataset, "captions_per_item", lambda: None)(), generator
            )
            if shuffle
            else None
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=generator,
            drop_last=False,
            num_workers=self.num_workers,
            # Pinning helps only CUDA copies; elsewhere PyTorch warns and ignores it.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_train if split == "train" else collate_eval,
        )

    def _index_loader(
        self, dataset: ResidentTrainBatches | ResidentEvalBatches, batch_size: int, shuffle: bool
    ) -> DataLoader:
        """Batches gathered from the features in memory: the sampler yields index batches, the
        dataset builds each batch at once (in this process: no workers, no pinning thread)."""
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        sampler = (
            self.training_order.sampler(len(dataset), dataset.captions_per_item(), generator)
            if shuffle
            else None
        )
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=IndexBatches(len(dataset), batch_size, sampler),
            generator=generator,
            num_workers=0,
            collate_fn=as_is,
        )


class Flickr8kDataModule(CaptionDataModule):
    """The name :class:`CaptionDataModule` had while Flickr8k was its only dataset, kept so that
    configs and checkpoints naming ``imgcap.data.datamodule.Flickr8kDataModule`` still build.

    A subclass with nothing added rather than a second name for the class: Lightning saves the
    data module's state (where the training order stands) under the class's own name, so a run
    resumed from such a checkpoint (whose stored config names this class) finds its position
    under the key it was saved with.
    """
