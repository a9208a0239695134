"""User-facing errors.

A `TunesmithError` is a problem with the user's input (config, data, model reference).
The CLI prints its message on one line and exits with code 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""


class TunesmithError(Exception):
    """Bad input: printed as one line by the CLI, exit code 2."""


class ConfigError(TunesmithError):
    pass


class DataError(TunesmithError):
    """Malformed or invalid data; the message names file:line where there is one."""


class ModelError(TunesmithError):
    pass
