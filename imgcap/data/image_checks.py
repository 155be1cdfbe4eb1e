"""The integrity check of a dataset's images, before any loader worker starts: a broken file is
one line naming it (``data.bad_images=error``) or is dropped with one warning (``skip``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from imgcap.data.annotations import Annotations
from imgcap.data.transforms import check_image_file
from imgcap.errors import DataError


def drop_unreadable_images(
    ann: Annotations,
    check_splits: Sequence[str] | None = None,
    bad_images: str = "error",
    quiet: bool = False,
) -> None:
    """Check every image of ``check_splits`` (None: all splits): JPEG/PNG markers, then a
    reduced-scale decode. With ``bad_images="skip"`` the unreadable ones leave ``ann`` (splits
    and captions) and are listed in ``ann.skipped``; with ``"error"`` the first raises."""
    from tqdm.auto import tqdm

    names = sorted(
        {
            n
            for split, ids in ann.splits.items()
            if check_splits is None or split in check_splits
            for n in ids
        }
    )
    quiet = quiet or len(names) < 1000
    bad: dict[str, str] = {}
    for name in tqdm(names, desc="checking images", unit="img", disable=quiet, dynamic_ncols=True):
        reason = check_image_file(ann.image_path(name))
        if reason is not None:
            if bad_images == "error":
                raise DataError(
                    f"{ann.image_path(name)}: {reason}; re-download the image or set data.bad_images=skip"
                )
            bad[name] = reason
    if bad:
        warnings.warn(
            f"skipping {len(bad)} unreadable image(s) in {ann.image_dir}: {', '.join(sorted(bad))}",
            UserWarning,
            stacklevel=3,
        )
        ann.skipped.extend(sorted(bad))
        ann.splits = {s: [n for n in ids if n not in bad] for s, ids in ann.splits.items()}
        for name in bad:
            ann.captions.pop(name, None)
