"""The one exception type for user mistakes (bad data, bad config, bad checkpoint).

Its message is a single line saying what is wrong, where (file and line, image, or config key)
and how to fix it. The entry scripts print that line alone instead of a traceback.
"""


class ImgcapError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message."""


class DataError(ImgcapError, ValueError):
    """Missing, malformed or inconsistent dataset files."""


class ConfigError(ImgcapError, ValueError):
    """A config value that cannot work (unknown choice, incompatible combination)."""


class CheckpointError(ImgcapError, ValueError):
    """A checkpoint that cannot be loaded by this version of imgcap."""
