# SPDX-License-Identifier: Apache-2.0
"""The loader's errors, below every module that raises them.

``MapLayoutError`` is raised both by ``bpfprog.compile_relay`` (a reused pin
of another shape) and by the loader (entry counts, a table that is not the
pinned map); one class, so that a caller catching ``LoaderError`` sees both.
"""

from __future__ import annotations


class LoaderError(RuntimeError):
    """A load, replace or unload that could not be done; the message says why and what to do."""


class AlreadyLoadedError(LoaderError):
    """The relay (or another XDP program) already owns an interface."""


class NotLoadedError(LoaderError):
    """``replace`` on a relay that is not loaded."""


class LoaderBusyError(LoaderError):
    """Another process holds the relay's lock."""


class MapLayoutError(LoaderError):
    """A map whose kernel type or sizes do not match this build's layout (e.g. a pin
    left by an older build)."""
