"""The batched image pipeline of the cache build, the decode path in the cache key, bad images
with the new build, and the build lock."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from imgcap.data.feature_cache import build_feature_cache, cache_key, load_feature_cache
from imgcap.data.pixels import GPU_PATH, PIL_PATH, ImageBatches, decode_path_for, gpu_decodable
from imgcap.data.transforms import eval_transform, load_image
from imgcap.errors import DataError
from tests.support.data_helpers import small_datamodule

CUDA = torch.cuda.is_available()


def jpeg_bytes(mode: str = "RGB", progressive: bool = False, size=(40, 30)) -> bytes:
    image = Image.new(mode, size, color=(200, 40, 90, 10)[: len(mode)] if mode != "L" else 128)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, progressive=progressive)
    return buffer.getvalue()


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` noisy JPEGs of a few sizes (portrait, landscape, square) at quality 90."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
        h, w = [(75, 100), (100, 75), (64, 64)][i % 3]
        noise = torch.randint(0, 256, (h // 8, w // 8, 3), generator=generator, dtype=torch.uint8)
        image = Image.fromarray(noise.numpy()).resize((w, h), Image.BILINEAR)
        names.append(f"im{i}.jpg")
        image.save(folder / names[-1], format="JPEG", quality=90)
    return names


class SlowEncoder(nn.Module):
    """(B, 3, S, S) -> (B, 4, 3) per-channel means of 2x2 cells; counts calls, sleeps a bit so a
    second builder arrives while the first one works."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.delay = delay
        self.calls = 0
        self._count = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._count:
            self.calls += 1
        time.sleep(self.delay)
        return self.pool(x).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------- the CPU path
def test_cpu_batches_equal_the_per_image_transform_bit_for_bit(tmp_path: Path) -> None:
    names = write_images(tmp_path, 7)
    source = ImageBatches(tmp_path, names, 48, threads=3)
    assert source.decode == PIL_PATH and len(source) == 7
    batches = list(source.batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    expected = torch.stack([eval_transform(48)(load_image(tmp_path / n)) for n in names])
    assert torch.equal(torch.cat(batches), expected)


def test_cpu_batches_on_the_flickr8k_sample(flickr8k_sample: Path) -> None:
    names = sorted(p.name for p in (flickr8k_sample / "Images").glob("*.jpg"))[:12]
    got = torch.cat(list(ImageBatches(flickr8k_sample / "Images", names, 224).batches(5)))
    expected = torch.stack(
        [eval_transform(224)(load_image(flickr8k_sample / "Images" / n)) for n in names]
    )
    assert torch.equal(got, expected)


def test_cpu_build_equals_the_per_image_build_and_shares_its_key(tmp_path: Path) -> None:
    from imgcap.data.datasets import ImageFiles, ImageListDataset

    names = write_images(tmp_path / "img", 10)
    enc = SlowEncoder()
    batched = build_feature_cache(
        tmp_path / "a", names, ImageBatches(tmp_path / "img", names, 32), enc, {"e": 1}, 32,
        batch_size=4, quiet=True,
    )  # fmt: skip
    per_image = build_feature_cache(
        tmp_path / "b", names, ImageListDataset(names, ImageFiles(tmp_path / "img", eval_transform(32))),
        enc, {"e": 1}, 32, batch_size=4, quiet=True,
    )  # fmt: skip
    assert (batched.array == per_image.array).all()
    # the Pillow path under either pipeline: one key, so either finds the other's cache
    assert load_feature_cache(tmp_path / "a", names, {"e": 1}, 32) is not None
    assert cache_key(names, {"e": 1}, 32) == cache_key(names, {"e": 1}, 32, decode=PIL_PATH)
    assert cache_key(names, {"e": 1}, 32, decode=GPU_PATH) != cache_key(
        names, {"e": 1}, 32, decode=PIL_PATH
    )
    assert load_feature_cache(tmp_path / "a", names, {"e": 1}, 32, decode=GPU_PATH) is None


def test_kept_in_memory_and_written_in_the_background(tmp_path: Path) -> None:
    names = write_images(tmp_path / "img", 6)
    store = build_feature_cache(
        tmp_path / "c", names, ImageBatches(tmp_path / "img", names, 32), SlowEncoder(), {"e": 2},
        32, batch_size=4, quiet=True, keep_on="cpu",
    )  # fmt: skip
    assert store.resident is not None and store.resident.shape == (6, 4, 3)
    assert store.resident.dtype == torch.float16
    store.wait_written()
    on_disk = load_feature_cache(tmp_path / "c", names, {"e": 2}, 32)
    assert on_disk is not None
    assert torch.equal(torch.tensor(on_disk.array[:]), store.resident)
    assert not list((tmp_path / "c").glob("*partial*"))  # temp files renamed or removed
    again = build_feature_cache(
        tmp_path / "c", names, ImageBatches(tmp_path / "img", names, 32), SlowEncoder(), {"e": 2},
        32, quiet=True, keep_on="cpu",
    )  # fmt: skip
    assert torch.equal(again.resident, store.resident)  # loaded into memory from the file


# ---------------------------------------------------------------------------- decode path
def test_which_jpegs_go_to_the_gpu_decoder() -> None:
    assert gpu_decodable(jpeg_bytes("RGB"))
    assert not gpu_decodable(jpeg_bytes("RGB", progressive=True))
    assert not gpu_decodable(jpeg_bytes("L"))  # grayscale
    assert not gpu_decodable(jpeg_bytes("CMYK"))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert not gpu_decodable(png.getvalue())
    assert not gpu_decodable(b"\xff\xd8\xff")  # cut short
    assert decode_path_for(torch.device("cpu")) == PIL_PATH
    with pytest.raises(ValueError, match="CUDA"):
        ImageBatches(".", [], 32, device="cpu", decode=GPU_PATH)


@pytest.mark.skipif(not CUDA, reason="the nvJPEG decode path needs CUDA")
def test_gpu_decode_agrees_with_pillow_within_the_stated_tolerance(tmp_path: Path) -> None:
    # Stated tolerance, in uint8 levels of the resized and cropped image (before normalising):
    # mean absolute difference <= 1.5 and 99.9th percentile <= 12 (nvJPEG's IDCT and chroma
    # upsampling, and bilinear-antialias on tensors instead of Pillow's, differ slightly).
    names = write_images(tmp_path, 12)
    for i, (mode, progressive) in enumerate([("L", False), ("CMYK", False), ("RGB", True)]):
        (tmp_path / f"odd{i}.jpg").write_bytes(jpeg_bytes(mode, progressive, size=(90, 70)))
        names.append(f"odd{i}.jpg")
    cuda = torch.device("cuda")
    gpu = ImageBatches(tmp_path, names, 64, device=cuda)
    assert gpu.decode == GPU_PATH
    got = torch.cat([b.cpu() for b in gpu.batches(5)])
    assert gpu.gpu_fallbacks == 3  # grayscale, CMYK and progressive went to Pillow
    expected = torch.cat(list(ImageBatches(tmp_path, names, 64).batches(5)))
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    levels = ((got - expected) * std * 255).abs()
    assert levels.mean() <= 1.5, levels.mean()
    assert levels.flatten().quantile(0.999) <= 12, levels.flatten().quantile(0.999)


# ---------------------------------------------------------------------------- bad images
def corrupt_jpeg(path: Path) -> None:
    """A JPEG whose Huffman table is zeroed: SOI and EOI intact, the decode fails."""
    noise = torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()
    Image.fromarray(noise).save(path, format="JPEG")
    data = path.read_bytes()
    table = data.find(b"\xff\xc4")
    path.write_bytes(data[: table + 4] + bytes(40) + data[table + 44 :])


def test_a_bad_image_in_the_batched_build_is_the_usual_one_line_error(tmp_path: Path) -> None:
    names = write_images(tmp_path, 5)
    corrupt_jpeg(tmp_path / names[2])
    with pytest.raises(DataError, match=f"cannot read image .*{names[2]}") as err:
        list(ImageBatches(tmp_path, names, 32).batches(2))
    assert "data.bad_images=skip" in str(err.value) and "\n" not in str(err.value)


def test_bad_images_skipped_before_the_batched_cache_build(tmp_path: Path) -> None:
    from tests.support.datasets import make_kaggle

    names = make_kaggle(tmp_path, n=8)
    corrupt_jpeg(tmp_path / "Images" / names[3])
    dm = small_datamodule(tmp_path, tmp_path / "cache", cache_features=True, bad_images="error")
    with pytest.raises(DataError, match=names[3]):
        dm.setup("fit")
    dm = small_datamodule(tmp_path, tmp_path / "cache", cache_features=True, bad_images="skip")
    with pytest.warns(UserWarning, match=names[3]):
        dm.prepare_vocabulary()
    dm.attach_feature_encoder(SlowEncoder(), {"e": 3})
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    seen = {n for b in batches for n in b["image_ids"]}
    assert names[3] not in seen and seen == set(dm.annotations.splits["train"])


# ---------------------------------------------------------------------------- build lock
def test_concurrent_builders_compute_once_and_the_second_reads_the_first(tmp_path: Path) -> None:
    names = write_images(tmp_path / "img", 8)
    encoders = [SlowEncoder(delay=0.3), SlowEncoder(delay=0.3)]
    stores: list = [None, None]

    def build(i: int) -> None:
        stores[i] = build_feature_cache(
            tmp_path / "cache", names, ImageBatches(tmp_path / "img", names, 32), encoders[i],
            {"e": 4}, 32, batch_size=4, quiet=True, keep_on="cpu" if i == 0 else None,
        )  # fmt: skip

    first = threading.Thread(target=build, args=(0,))
    first.start()
    time.sleep(0.2)  # the first holds the lock and is computing
    second = threading.Thread(target=build, args=(1,))
    second.start()
    first.join(30)
    second.join(30)
    assert encoders[0].calls == 2 and encoders[1].calls == 0  # built once, by the first
    assert torch.equal(torch.tensor(stores[1].array[:]), stores[0].resident)
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 1


def _build_in_a_process(root: str, names: list[str], out: str) -> None:
    enc = SlowEncoder(delay=0.2)
    build_feature_cache(
        Path(root) / "cache", names, ImageBatches(Path(root) / "img", names, 32), enc, {"e": 5},
        32, batch_size=4, quiet=True,
    )  # fmt: skip
    Path(out).write_text(str(enc.calls))


@pytest.mark.slow
def test_two_processes_build_once(tmp_path: Path) -> None:
    import multiprocessing as mp

    names = write_images(tmp_path / "img", 8)
    context = mp.get_context("spawn")
    procs = [
        context.Process(
            target=_build_in_a_process, args=(str(tmp_path), names, str(tmp_path / f"calls{i}"))
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    calls = sorted(int((tmp_path / f"calls{i}").read_text()) for i in range(2))
    assert calls == [0, 2]  # one process computed both batches, the other read its cache
