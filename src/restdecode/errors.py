"""Exceptions users are meant to see: each message names the file or value at fault."""


class RestdecodeError(Exception):
    """Base class for errors with a message fit for the end user."""


class AssetError(RestdecodeError):
    """An asset could not be fetched, or its content does not match its pinned hash."""


class ModelError(RestdecodeError):
    """A model name or path cannot be resolved or loaded."""


class DatastoreError(RestdecodeError):
    """A datastore file is missing, corrupt, or does not match the model's tokenizer."""


class DecodingError(RestdecodeError):
    """Generation cannot proceed as asked (e.g. prompt longer than the model's context)."""


class OptionsError(RestdecodeError):
    """A generation option or chat message is out of range or of the wrong type."""
