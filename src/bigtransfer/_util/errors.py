"""Error types raised below the command line that it reports as one line (exit code 2), importable without the
layers that raise them, so that `bigtransfer --help` loads none of them."""


class LoaderWorkerError(RuntimeError):
    """A loading worker process died; the message says what usually causes it and what to try."""
