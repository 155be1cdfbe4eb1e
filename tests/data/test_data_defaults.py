"""The data module's constructor defaults are the defaults of ``conf/data/flickr8k.yaml`` (the
base the other dataset configs extend): one set of defaults, whether the module is built from
Python or from the config."""

from __future__ import annotations

import inspect

import yaml

from imgcap.data.datamodule import CaptionDataModule
from tests.support.hydra_helpers import CONF_DIR

# What the Flickr8k preset chooses for its data set, where the constructor stays neutral
# (None: no cap on caption length; evaluation batches as large as training ones).
DATASET_CHOICES = {"eval_batch_size": 64, "max_caption_len": 40}


def test_constructor_defaults_equal_the_flickr8k_config():
    written = yaml.safe_load((CONF_DIR / "data" / "flickr8k.yaml").read_text())
    assert written.pop("_target_") == "imgcap.data.datamodule.CaptionDataModule"
    params = inspect.signature(CaptionDataModule.__init__).parameters
    plain = {k: v for k, v in written.items() if not (isinstance(v, str) and "${" in v)}
    assert set(plain) <= set(params), set(plain) - set(params)
    differ = {k: (v, params[k].default) for k, v in plain.items() if params[k].default != v}
    assert differ == {k: (v, None) for k, v in DATASET_CHOICES.items()}
    # the loader settings the issue found disagreeing
    assert (params["num_workers"].default, params["pin_memory"].default) == ("auto", True)
    assert params["persistent_workers"].default is True
