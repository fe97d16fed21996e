"""Errors that the shards package raises for bad model files and shard directories.

Each one names the file and what is wrong with it, so the CLI can print it as is.
"""


class ShardError(Exception):
    """Base class: a model file or shard directory that cannot be used."""


class ModelFileError(ShardError):
    """The GGUF file is missing, unreadable, or not a model we can convert."""


class UnsupportedModelError(ModelFileError):
    """The GGUF file is readable but its architecture or layout is not supported."""


class ShardIntegrityError(ShardError):
    """A shard directory is incomplete or a file's size or sha256 does not match the manifest."""
