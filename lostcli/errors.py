"""Errors a user can cause. The CLI prints them as one line on stderr and exits with code 2."""


class LostError(Exception):
    """Base class: anything the user can fix (bad file, bad config, bad argument)."""


class ConfigError(LostError):
    """A recipe or override names an unknown key or carries a value of the wrong type."""


class MeshError(LostError):
    """A mesh file is unreadable, empty, NaN-bearing, degenerate or too large."""


class CheckpointError(LostError):
    """A weights file is missing, unreadable, or does not fit the model it is loaded into."""


class DataError(LostError):
    """A dataset directory is missing, malformed, or lacks what a command needs."""
