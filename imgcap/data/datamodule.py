"""The LightningDataModule: validation, vocabulary, datasets and loaders for any caption dataset.

Which dataset is a matter of configuration: ``data.root`` and the annotation reader
(``data.layout``, detected by default; see :mod:`imgcap.data.readers`), with
``data.annotations_file`` / ``data.image_dir`` when the files are not where the reader looks.

Hook order and what each one does:

* ``prepare_data`` (once per machine, on local rank zero; the other ranks wait): generate the
  synthetic set when asked, then the checks below, writing the vocabulary file, and, when a
  frozen encoder is attached, the feature caches of the splits the Trainer is about to use,
  computed on the Trainer's device (the GPU when training on one).
* ``setup(stage)`` (every process): the same checks (cached in-process), load/build the vocabulary,
  build the datasets for the stage (reading the feature cache, or building it when setup runs
  without a Trainer; preloading pixels when enabled).

With cached features, ``data.resident`` keeps them in memory (on the training device, or in host
memory) and the loaders yield whole batches gathered by index (:mod:`imgcap.data.resident`).

All user mistakes surface here as one-line :class:`~imgcap.errors.DataError`, before any
DataLoader worker starts. Nothing is written until every check has passed, and every write is
atomic, so a failed run never damages an earlier vocabulary or cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from imgcap.data.annotations import Annotations, load_annotations
from imgcap.data.cache_location import dataset_identity, default_cache_dir, legacy_cache_notice
from imgcap.data.datasets import (
    CachedFeatures,
    CaptionEvalDataset,
    CaptionTrainDataset,
    ImageFiles,
    PreloadedImages,
    collate_eval,
    collate_train,
)
from imgcap.data.feature_cache import FeatureStore, build_feature_cache, default_batch_size
from imgcap.data.pixels import ImageBatches
from imgcap.data.readers import check_layout
from imgcap.data.resident import (
    RESIDENT_CHOICES,
    IndexBatches,
    Placement,
    ResidentEvalBatches,
    ResidentFeatures,
    ResidentTrainBatches,
    as_is,
    choose_placement,
    feature_shape,
)
from imgcap.data.sampler import ResumableSampler
from imgcap.data.shapes import META_FILE, generate_shapes, is_complete_shapes_dataset
from imgcap.data.transforms import check_image_file, eval_transform, train_transform
from imgcap.errors import ConfigError, DataError
from imgcap.phase_timing import timed
from imgcap.vocab import Vocabulary, vocabulary_warning

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}

log = logging.getLogger(__name__)


def resolve_num_workers(value: int | str) -> int:
    """``auto`` -> one loader worker per CPU this process may use, less one for the main
    process, at most 8 (JPEG decoding past that rarely pays); an int as given."""
    if value == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(0, min(8, cpus - 1))
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise ConfigError(f"data.num_workers must be 'auto' or an int >= 0, got {value!r}")
    return workers


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
    ):
        super().__init__()
        self.layout = check_layout(layout)  # an unknown name fails here, before any work
        if str(captions_per_image) not in ("all", "1"):
            raise ConfigError(
                f"data.captions_per_image must be 'all' or 1, got {captions_per_image!r}"
            )
        if resident not in RESIDENT_CHOICES:
            raise ConfigError(
                f"data.resident must be one of {'|'.join(RESIDENT_CHOICES)}, got {resident!r}"
            )
        if bad_images not in ("error", "skip"):
            raise ConfigError(f"data.bad_images must be 'error' or 'skip', got {bad_images!r}")
        if max_caption_len is not None and max_caption_len < 3:
            raise ConfigError(
                f"data.max_caption_len must be >= 3 (<start>, a word, <end>), got {max_caption_len}"
            )
        if batch_size < 1 or image_size < 8:
            raise ConfigError(
                f"data.batch_size must be >= 1 and data.image_size >= 8, got {batch_size}, {image_size}"
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
        self._placement: Placement | None = None  # decided once, on the first cache needed
        self._stores: dict[str, FeatureStore] = {}
        # Where the training order resumes (epoch, items already seen), from a checkpoint.
        self._resume_position: tuple[int, int] | None = None
        self._train_sampler: ResumableSampler | None = None

        self.annotations: Annotations | None = None
        self._vocab: Vocabulary | None = None
        self._encoder: torch.nn.Module | None = None
        self._encoder_key: dict | None = None
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ public state

    @property
    def vocab(self) -> Vocabulary | None:
        """The vocabulary: built from the training split in setup, or set from a checkpoint."""
        return self._vocab

    @vocab.setter
    def vocab(self, vocab: Vocabulary) -> None:
        # A given vocabulary (e.g. from a checkpoint) wins: ids must match the trained model.
        self._vocab = vocab
        self.datasets.clear()

    def attach_feature_encoder(self, encoder: torch.nn.Module, encoder_key: dict) -> None:
        """Use ``encoder`` ((B, 3, S, S) -> (B, P, C), frozen) to fill the feature cache in setup.

        ``encoder_key`` must describe everything its output depends on (architecture, weights,
        grid size...): it is part of the cache key. Call it before setup, or after a first
        ``setup("fit")`` (which then only builds the vocabulary) and call setup again.
        """
        self._encoder = encoder
        self._encoder_key = dict(encoder_key)
        self.datasets.clear()
        self._stores.clear()

    # ------------------------------------------------------------------ hooks

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            self._ensure_synthetic()
        self._load_annotations()
        self._load_vocab()
        if self.cache_features and self._encoder is not None:
            # the splits the Trainer is about to use (fit: train + val; test: test)
            trainer = getattr(self, "trainer", None)
            stage = trainer.state.fn.value if trainer is not None and trainer.state.fn else None
            splits = self._load_annotations().splits
            for split in _STAGE_SPLITS.get(stage, _STAGE_SPLITS[None]):
                if splits.get(split):
                    self._feature_store(split)

    def setup(self, stage: str | None = None) -> None:
        self._load_annotations()
        self._load_vocab()
        if self.cache_features and self._encoder is None:
            # The model (hence the encoder) is sized from the vocabulary built just above: the
            # task attaches the encoder next and calls setup again to build the datasets.
            return
        for split in _STAGE_SPLITS.get(stage, _STAGE_SPLITS[None]):
            if split not in self.datasets:
                self.datasets[split] = self._make_dataset(split)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def teardown(self, stage: str | None = None) -> None:
        self.wait_for_cache_files()

    def wait_for_cache_files(self) -> None:
        """Features kept in memory are written to disk in the background: finish the files."""
        for store in self._stores.values():
            store.wait_written()

    # ------------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """Where the training order stands: ``{"epoch", "position"}`` (items already trained on
        in that epoch), saved in every checkpoint so a resumed run continues the same order."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self._train_sampler is None:
            return {}
        epoch = int(trainer.current_epoch)
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        position = done * self.batch_size
        if position >= self._train_sampler.num_items:
            epoch, position = epoch + 1, 0  # the epoch's batches are all done: next one's start
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._resume_position = (int(state["epoch"]), int(state["position"]))
            if self._train_sampler is not None:
                self._train_sampler.resume_at(*self._resume_position)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    # ------------------------------------------------------------------ internals

    def _ensure_synthetic(self) -> None:
        params = self.synthetic or {}
        if is_complete_shapes_dataset(self.root, **params):
            return
        has_other_data = (
            self.root.is_dir()
            and any(self.root.iterdir())
            and not (self.root / META_FILE).is_file()
        )
        if has_other_data:
            return  # a real dataset lives here: use it, never overwrite it
        if not self.quiet:
            log.info(f"Generating the shapes dataset into {self.root} ...")
        generate_shapes(self.root, overwrite=True, **params)

    def _load_annotations(self) -> Annotations:
        if self.annotations is not None:
            return self.annotations
        if self.synthetic is not None and not self.root.exists():
            self._ensure_synthetic()  # setup() without prepare_data() (e.g. a quick script)
        ann = load_annotations(
            self.root, self.split_seed, self.layout, self.annotations_file, self.image_dir
        )
        self._check_images(ann)
        if self.limit_train_images is not None:
            ann.splits["train"] = ann.splits["train"][: self.limit_train_images]
        self.annotations = ann
        return ann

    def _check_images(self, ann: Annotations) -> None:
        """Integrity check of every image in a split (markers, then a reduced-scale decode)."""
        from tqdm.auto import tqdm

        names = sorted(
            {
                n
                for split, ids in ann.splits.items()
                if self.check_splits is None or split in self.check_splits
                for n in ids
            }
        )
        quiet = self.quiet or len(names) < 1000
        bad: dict[str, str] = {}
        for name in tqdm(
            names, desc="checking images", unit="img", disable=quiet, dynamic_ncols=True
        ):
            reason = check_image_file(ann.image_path(name))
            if reason is not None:
                if self.bad_images == "error":
                    raise DataError(
                        f"{ann.image_path(name)}: {reason}; re-download the image or set data.bad_images=skip"
                    )
                bad[name] = reason
        if bad:
            warnings.warn(
                f"skipping {len(bad)} unreadable image(s) in {ann.image_dir}: {', '.join(sorted(bad))}",
                UserWarning,
                stacklevel=2,
            )
            ann.skipped.extend(sorted(bad))
            ann.splits = {s: [n for n in ids if n not in bad] for s, ids in ann.splits.items()}
            for name in bad:
                ann.captions.pop(name, None)

    def train_references(self) -> list[list[str]]:
        """For each training image, in split order, all its raw reference captions (e.g. the
        corpus of a CIDEr-D reward's document frequencies). Reads and checks the annotations on
        first use; honours ``limit_train_images`` and images skipped as unreadable."""
        ann = self._load_annotations()
        return [list(ann.captions[name]) for name in ann.splits["train"]]

    def vocab_path(self) -> Path:
        """``<cache_dir>/vocab-<hash>.json``; the hash covers the training captions,
        min_word_freq and the dataset (its resolved caption file: one cache folder serves all)."""
        ann = self._load_annotations()
        train = ann.splits["train"]
        caption_file = ann.caption_file.resolve() if ann.caption_file else self.root.resolve()
        payload = json.dumps(
            {
                "train": [[n, ann.captions[n]] for n in train],
                "min_word_freq": self.min_word_freq,
                "dataset": str(caption_file),
            }
        )
        return self.cache_dir / f"vocab-{hashlib.sha256(payload.encode()).hexdigest()[:16]}.json"

    def _load_vocab(self) -> Vocabulary:
        if self._vocab is not None:
            return self._vocab
        ann = self._load_annotations()
        notice = legacy_cache_notice(self.root, self.cache_dir)
        if notice:
            log.warning(notice)
        path = self.vocab_path()
        train_captions = [c for n in ann.splits["train"] for c in ann.captions[n]]
        vocab = None
        if path.is_file():
            try:
                vocab = Vocabulary.load(path)
            except (OSError, ValueError, KeyError):
                pass  # unreadable: rebuild and replace it
        if vocab is None:
            vocab = Vocabulary.build(train_captions, self.min_word_freq)
            try:
                vocab.save(path)
            except OSError as e:
                warnings.warn(
                    f"cannot write the vocabulary to {path} ({e}); set data.cache_dir to a writable folder",
                    stacklevel=2,
                )
        # Built now or read from the cache, a vocabulary that maps most words to <unk> trains a
        # model that says nothing else: say so in every run, not only the first.
        warning = vocabulary_warning(vocab, train_captions, self.min_word_freq)
        if warning:
            log.warning(warning)
        self._vocab = vocab
        return vocab

    def _make_dataset(self, split: str) -> Dataset:
        ann = self._load_annotations()
        ids = ann.splits[split]
        if not ids:
            raise DataError(
                f"{self.root}: the {split} split is empty; check the split lists or the data"
            )
        train = split == "train"
        if self.cache_features:
            if self._encoder is None or self._encoder_key is None:
                raise ConfigError(
                    "data.cache_features=true needs the frozen encoder: call dm.attach_feature_encoder(...) before setup"
                )
            if train and self.augment:
                warnings.warn(
                    "data.augment is ignored with data.cache_features=true (features are precomputed)",
                    stacklevel=2,
                )
            store = self._feature_store(split)
            placement = self._placement
            if placement is not None and placement.mode != "off":
                # (a store that travelled to another process left its memory copy behind)
                store.keep_in_memory(placement.keep_on, placement.pin)
                features = ResidentFeatures(store.resident, placement.device)
                if train:
                    return ResidentTrainBatches(
                        ids,
                        ann.captions,
                        self._load_vocab(),
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
                self._load_vocab(),
                source,
                self.captions_per_image,
                self.max_caption_len,
            )
        return CaptionEvalDataset(ids, ann.captions, source)

    @timed("cache build")  # built here, or read when present: one phase of the run's timings
    def _feature_store(self, split: str) -> FeatureStore:
        """The split's feature cache: read it, or compute it on the training device (kept in
        memory as ``data.resident`` says; one store per split and process)."""
        if split in self._stores:
            return self._stores[split]
        ann = self._load_annotations()
        ids = ann.splits[split]
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(
                f"cannot create the cache folder {self.cache_dir} ({e}); set data.cache_dir to a writable folder"
            ) from None
        # Under a Trainer the cache is built where training will run (its root device: the
        # GPU), even though the model is moved there only later; without one, where the encoder is.
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None:
            device = next((p.device for p in self._encoder.parameters()), torch.device("cpu"))
        placement = self._choose_placement(device)
        store = build_feature_cache(
            self.cache_dir,
            ids,
            # threaded reads, batched decode (nvJPEG on CUDA) and transforms on the device
            ImageBatches(ann.image_dir, ids, self.image_size, device),
            self._encoder,
            self._encoder_key,
            self.image_size,
            batch_size=default_batch_size(device, self.eval_batch_size),
            num_workers=self.num_workers,
            quiet=self.quiet,
            desc=f"feature cache ({split})",
            device=device,
            keep_on=placement.keep_on,
            pin=placement.pin,
            dataset=dataset_identity(ann.image_dir, ids),
        )
        self._stores[split] = store
        return store

    def _choose_placement(self, device: torch.device) -> Placement:
        """Where the cached features live (``data.resident``), decided once for every split,
        with one log line."""
        if self._placement is None or self._placement.device != device:
            splits = self._load_annotations().splits
            images = sum(len(splits.get(s) or []) for s in ("train", "val", "test"))
            pixels, channels = feature_shape(self._encoder, self.image_size)
            nbytes = 2 * images * pixels * channels
            self._placement, message = choose_placement(self.resident, nbytes, device)
            log.info(message)
        return self._placement

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            if self.cache_features and self._encoder is None:
                raise ConfigError(
                    "data.cache_features=true needs the frozen encoder: call dm.attach_feature_encoder(...) before the loaders"
                )
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        if isinstance(dataset, ResidentTrainBatches | ResidentEvalBatches):
            return self._index_loader(dataset, batch_size, shuffle)
        # The loader's own generator: making an iterator then draws nothing from the global RNG
        # (which dropout and scheduled sampling use), so resuming a run reproduces it exactly.
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        sampler = (
            self._shuffled_order(
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

    def _shuffled_order(
        self, size: int, captions_per_item: Sequence[int] | None, generator: torch.Generator
    ) -> ResumableSampler:
        """The training order, resumed where a checkpoint left it (one sampler serves the
        per-item and the resident loaders, so both see the same order)."""
        sampler = ResumableSampler(
            size,
            seed=self.shuffle_seed,
            captions_per_item=captions_per_item,
            loader_generator=generator,
        )
        if self._resume_position is not None:
            sampler.resume_at(*self._resume_position)
            self._resume_position = None
        self._train_sampler = sampler
        return sampler

    def _index_loader(
        self, dataset: ResidentTrainBatches | ResidentEvalBatches, batch_size: int, shuffle: bool
    ) -> DataLoader:
        """Batches gathered from the features in memory: the sampler yields index batches, the
        dataset builds each batch at once (in this process: no workers, no pinning thread)."""
        generator = torch.Generator().manual_seed(self.shuffle_seed)
        sampler = (
            self._shuffled_order(len(dataset), dataset.captions_per_item(), generator)
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
