"""The one exception type that means "the user asked for something that cannot work".

The CLI turns it into a one-line message and exit code 2; library users get an ordinary exception whose text
names the thing (file, model, stage, ...) and what is wrong with it.
"""


class SReTError(ValueError):
    """Bad input: a missing or malformed file, an unknown model, a shape that cannot be processed."""


class CheckpointError(SReTError, FileNotFoundError):
    """A checkpoint that is missing, truncated, or does not fit the architecture."""
