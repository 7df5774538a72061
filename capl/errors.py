"""User-facing errors.

A :class:`ConfigError` is a mistake in what the user asked for (an unknown class, a ratio out of
range, a missing dataset folder). The CLI prints its one-line message and exits non-zero without
a traceback; everything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A user error with a one-line message that names the problem and the fix."""
