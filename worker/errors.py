"""The few exception types signfeed raises; each has one outcome at the CLI and in the daemon."""


class WorkerError(Exception):
    """A failure an operator can act on; its message is one line that names what to fix."""


class ConfigError(WorkerError):
    """config.toml (or a file it names) is invalid; the worker refuses to start with it."""


class ScriptError(WorkerError):
    """A pre-request script failed, timed out or ran out of memory; nothing was fetched."""


class FetchError(WorkerError):
    """The API request failed: network, status, size or a body that is not JSON."""


class StoreError(WorkerError):
    """The snapshot database could not be read or written."""


class RenderError(WorkerError):
    """A template failed to render; the previous feed file stays in place."""
