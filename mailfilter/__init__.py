"""mailfilter: fingerprint every image in a message and stop known abusive images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailfilter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
