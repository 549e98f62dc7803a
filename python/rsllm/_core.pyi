"""Type stubs for the Rust extension module, checked by `mypy.stubtest`."""

__all__ = ["__version__", "_raise_core_error"]

__version__: str

def _raise_core_error(kind: str, message: str) -> None: ...
