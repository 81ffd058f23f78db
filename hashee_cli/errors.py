"""Errors that the command line turns into one-line messages."""


class HasheeError(Exception):
    """A problem with the user's input or files, reported without a traceback.

    The message names the file, line or value at fault and what to do about it.
    """


class DataError(HasheeError):
    """A data file is missing, empty or malformed."""


class HashTableError(HasheeError):
    """A hash table is invalid or does not fit the model it is used with."""


class CheckpointError(HasheeError):
    """A checkpoint directory is incomplete or unreadable."""


class ModelNotFoundError(HasheeError):
    """A backbone name resolves to no local directory, alias or reachable hub model."""
