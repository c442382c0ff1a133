"""The package version, in a module of its own so that the modules that stamp it into run
folders (report, estimate) do not import the package (whose ``__init__`` imports them)."""

__version__ = "0.1.0"
