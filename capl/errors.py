"""User-facing errors.

A :class:`ConfigError` is a mistake in what the user asked for (an unknown class, a ratio out of
range, a missing dataset folder). The CLI prints its one-line message and exits non-zero without
a traceback; everything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A user error with a one-line message that names the problem and the fix."""


def find_config_error(error: BaseException) -> ConfigError | None:
    """The ConfigError behind ``error``, following ``__cause__``/``__context__`` chains.

    jsonargparse and Lightning wrap exceptions raised while they instantiate classes; the user
    should still see only the one-line message.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
