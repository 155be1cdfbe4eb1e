"""COCO files use the dataset's own image ids (cocoid, the id in Flickr/COCO file names) and
keep each image's file name; pycocotools reads them back."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from imgcap.api.coco import coco_references, coco_results, id_from_file_name, image_id_map
from imgcap.data.annotations import load_annotations
from tests.support.datasets import make_coco_tree

FLICKR = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "101654506_8eb26cfb60.jpg"]


def test_ids_from_file_names() -> None:
    assert id_from_file_name("1000268201_693b08cb0e.jpg") == 1000268201
    assert id_from_file_name("val2014/COCO_val2014_000000000042.jpg") == 42
    assert id_from_file_name("p1.jpg") is None
    assert image_id_map(FLICKR) == {n: int(n.split("_")[0]) for n in FLICKR}


def test_dataset_ids_win_and_positions_are_the_last_resort() -> None:
    names = ["b.jpg", "a.jpg", "c.jpg"]
    assert image_id_map(names, {"a.jpg": 7, "b.jpg": 3, "c.jpg": 9}) == {
        "a.jpg": 7,
        "b.jpg": 3,
        "c.jpg": 9,
    }
    # One image without an id (or two sharing one): positions for all, never a mix.
    assert image_id_map(names, {"a.jpg": 7, "b.jpg": 3}) == {"a.jpg": 1, "b.jpg": 2, "c.jpg": 3}
    assert image_id_map(names, {"a.jpg": 7, "b.jpg": 7, "c.jpg": 1})["c.jpg"] == 3
    mixed = [*FLICKR, "holiday.jpg"]
    assert sorted(image_id_map(mixed).values()) == [1, 2, 3, 4]


def test_karpathy_coco_json_gives_cocoids(tmp_path: Path) -> None:
    make_coco_tree(tmp_path)
    data = json.loads((tmp_path / "dataset_coco.json").read_text())
    for k, entry in enumerate(data["images"]):
        entry["cocoid"] = 500000 + k
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    ann = load_annotations(tmp_path)
    expected = {f"{e['filepath']}/{e['filename']}": e["cocoid"] for e in data["images"]}
    assert ann.dataset_ids == expected
    test = ann.splits["test"]
    ids = image_id_map(test, ann.dataset_ids)
    assert ids == {n: expected[n] for n in test}


def test_results_and_references_agree_under_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    refs = [["a dog runs", "a brown dog"], ["two men talk"], ["a child plays"]]
    hyps = ["a dog", "men talk", "a child"]
    ref_file, res_file = tmp_path / "refs.json", tmp_path / "res.json"
    ref_file.write_text(json.dumps(coco_references(FLICKR, refs)))
    results = coco_results(FLICKR, hyps)
    res_file.write_text(json.dumps(results))
    assert all(r["file_name"] == n for r, n in zip(results, FLICKR, strict=True))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ref_file))
        loaded = coco.loadRes(str(res_file))
    assert sorted(loaded.getImgIds()) == sorted(int(n.split("_")[0]) for n in FLICKR)
    assert coco.loadImgs(1000268201)[0]["file_name"] == FLICKR[0]
    assert [a["caption"] for a in coco.imgToAnns[1000268201]] == refs[0]
    assert loaded.imgToAnns[101654506][0]["caption"] == "a child"
