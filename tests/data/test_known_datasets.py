"""data=flickr30k / data=coco_karpathy without their files: one line naming the dataset, the
missing files, the layout and where the files come from (not a config key the user never set)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from imgcap.errors import DataError
from tests.support.hydra_helpers import compose_train


@pytest.mark.parametrize(
    ("config", "name", "files"),
    [
        ("flickr30k", "Flickr30k", ["dataset_flickr30k.json", "flickr30k-images"]),
        ("coco_karpathy", "MS-COCO 2014", ["dataset_coco.json", "train2014", "val2014"]),
    ],
)
def test_missing_dataset_names_its_files_and_their_source(tmp_path, config, name, files):
    cfg = compose_train(tmp_path, [f"data={config}"])
    with pytest.raises(DataError) as err:
        instantiate(cfg.data).prepare_data()
    message = str(err.value)
    assert "\n" not in message and "data.annotations_file" not in message
    assert message.startswith(f"{name} (data={config}) not found")
    assert all(f in message for f in files) and "data.root=" in message
    assert "karpathy/deepimagesent" in message


def test_partly_there_coco_names_what_is_missing(tmp_path):
    root = tmp_path / "data" / "coco"
    (root / "train2014").mkdir(parents=True)
    cfg = compose_train(tmp_path, ["data=coco_karpathy"])
    with pytest.raises(DataError, match=rf"dataset_coco\.json, val2014/ under {root} are missing"):
        instantiate(cfg.data).prepare_data()


def test_a_users_own_missing_file_keeps_the_config_key_message(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("")
    cfg = compose_train(
        tmp_path, [f"data.root={tmp_path / 'mine'}", "data.annotations_file=caps.csv"]
    )
    with pytest.raises(DataError, match="data.annotations_file: .*caps.csv does not exist"):
        instantiate(cfg.data).prepare_data()
