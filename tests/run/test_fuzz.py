"""Fuzzing the user-facing inputs: every caption file and every config value either works or
raises the project's own error (one line, naming the file/line or the key); never an unrelated
exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict
from PIL import Image

from imgcap.captioning_module import CaptioningModule
from imgcap.data.annotations import load_annotations
from imgcap.errors import ImgcapError
from imgcap.run.checks import check_train_config
from imgcap.vocab import Vocabulary
from tests.support.hydra_helpers import compose_train

IMAGES = ["a.jpg", "b.jpg", "c.jpg"]
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def image_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="imgcap-fuzz-"))
    for folder in ("Images", "Flicker8k_Dataset"):
        (root / folder).mkdir()
        for i, name in enumerate(IMAGES):
            Image.new("RGB", (8, 8), (40 * i, 90, 10)).save(root / folder / name)
    return root


# Pieces users' files are made of, plus the bytes that break naive readers.
PIECES = st.sampled_from(
    [
        *IMAGES,
        "missing.jpg",
        "image",
        "caption",
        "image,caption",
        ",",
        '"',
        "#",
        "#0",
        "\t",
        " ",
        "a dog runs",
        "Ein Hund läuft ☃",
        "\n",
        "\r\n",
        "\ufeff",
        "",
    ]
)
RAW = st.sampled_from([b"\xff", b"\xfe\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf", b"\x80abc"])
CAPTION_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(PIECES.map(str.encode), RAW), max_size=40).map(b"".join),
    st.lists(st.tuples(st.sampled_from([*IMAGES, "missing.jpg", ""]), PIECES), max_size=12).map(
        lambda rows: ("image,caption\n" + "".join(f"{i},{c}\n" for i, c in rows)).encode()
    ),
)


def _load(root: Path) -> None:
    """What training does with a caption file before any image is decoded."""
    ann = load_annotations(root)
    vocab = Vocabulary.build((c for n in ann.splits["train"] for c in ann.captions[n]), 1)
    for captions in ann.captions.values():
        for caption in captions:
            assert vocab.decode(vocab.encode(caption)[1:-1]) is not None


@FUZZ
@given(data=CAPTION_BYTES, layout=st.sampled_from(["kaggle", "original"]))
def test_caption_file_bytes_load_or_raise_our_error(image_root: Path, data: bytes, layout: str):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if layout == "kaggle":
            (root / "Images").symlink_to(image_root / "Images", target_is_directory=True)
            (root / "captions.txt").write_bytes(data)
        else:
            (root / "Flicker8k_Dataset").symlink_to(
                image_root / "Flicker8k_Dataset", target_is_directory=True
            )
            (root / "Flickr8k_text").mkdir()
            (root / "Flickr8k_text" / "Flickr8k.token.txt").write_bytes(data)
        try:
            _load(root)
        except ImgcapError as err:
            message = str(err)
            assert message and "\n" not in message, message


VALUES = st.one_of(
    st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.lists(st.integers(min_value=0, max_value=3), max_size=2),
)
KEYS = [
    "model.decoder.attention_dim",
    "model.decoder.embed_dim",
    "model.decoder.decoder_dim",
    "model.decoder.dropout",
    "model.objective.alpha_c",
    "model.encoded_size",
    "model.teacher_forcing_ratio",
    "model.beam_size",
    "model.max_len",
    "model.length_penalty",
    "data.batch_size",
    "data.image_size",
    "data.num_workers",
    "data.min_word_freq",
    "data.max_caption_len",
    "data.augment",
]


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    cfg = compose_train(
        tmp_path_factory.mktemp("fuzzcfg"),
        [
            "data=shapes",
            "model.encoder.arch=small_cnn",
            "model.encoder.weights=null",
            "++model.encoder.width=8",
            "model.decoder.attention_dim=8",
            "model.decoder.embed_dim=8",
            "model.decoder.decoder_dim=8",
            "model.encoded_size=2",
            "model.meteor=false",
        ],
    )
    return OmegaConf.to_container(cfg, resolve=True)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_config_values_work_or_name_the_key(base_cfg, changes):
    cfg = OmegaConf.create(base_cfg)
    with open_dict(cfg):
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, merge=False)
    try:
        check_train_config(cfg)
    except ImgcapError as err:
        assert any(str(err).startswith(key) for key in changes), (str(err), changes)
        return
    # Accepted values must build a model that captions (the data values are checked when the
    # data module is built, which the existing tests cover).
    model_cfg = OmegaConf.to_container(cfg.model)
    for key in ("_target_", "_convert_", "optimizer", "scheduler"):
        model_cfg.pop(key, None)
    model = CaptioningModule(
        vocab=["<pad>", "<start>", "<end>", "<unk>", "a", "b", "c"], **model_cfg
    )
    features = torch.randn(2, model_cfg["encoded_size"] ** 2, model.encoder.out_dim)
    try:
        captions, _ = model.eval().caption_features(features)
    except ImgcapError as err:  # e.g. a beam wider than this tiny vocabulary
        assert "beam_size" in str(err)
        return
    assert len(captions) == 2
