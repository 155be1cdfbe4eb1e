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


class DivergenceError(ImgcapError):
    """Training produced a non-finite loss or non-finite weights."""


class Interrupted(SystemExit):
    """Training stopped on SIGTERM/SIGINT (or Ctrl-C) after saving a checkpoint to resume from.

    A SystemExit whose ``code`` is the shell convention for a death by that signal (128 + its
    number: 143 for SIGTERM, 130 for SIGINT), so schedulers and ``train && evaluate`` pipelines
    see a failure; ``message`` is the one line for the user (what was saved, how to resume)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(exit_code)
        self.message = message
