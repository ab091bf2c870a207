"""The package's version: always pitlake's own (the `version` of the repository's Cargo.toml)."""

__version__ = "0.1.0"
