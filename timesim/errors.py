"""One exception family; the CLI turns each into one line on stderr and exit code 2."""


class TimesimError(Exception):
    """Base of every error a user can cause with a bad file, key or argument."""


class ConfigError(TimesimError):
    """A hardware config or an override is malformed."""


class TraceError(TimesimError):
    """A trace (manifest, chunk, synthetic source) is malformed or incomplete."""


class SimulationError(TimesimError):
    """The simulation cannot proceed with the given inputs."""


class TimesimWarning(UserWarning):
    """Something a user of the Python API should know (a layer left digital, an unknown batch
    size); shown by Python's warnings machinery, which a script sees without any logging set
    up (a library's log records go nowhere until the application configures logging)."""
