"""What a worker process is told by its supervisor (pure data, no reactor)."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from osp_server.config import Config

# The configuration travels on the worker's stdin as one length-prefixed pickle: the
# supervisor and every worker (respawned ones included) then run on exactly the
# configuration the supervisor checked, even if the file changed since.  The pipe is
# private between a process and the child it spawned, so pickle's trust model holds.
_LENGTH = struct.Struct("!I")
MAX_CONFIG_BYTES = 16 << 20


class HandOverError(Exception):
    """The supervisor's hand-over on stdin is missing or malformed."""


@dataclass(frozen=True)
class WorkerRole:
    """The index of this worker among ``count``, and its inherited listening sockets."""

    index: int
    count: int
    listeners: Mapping[str, int] = field(default_factory=dict)
    """Listener name (``https``, ``metrics`` …) -> file descriptor in this process."""
    accept_when_ready: bool = False
    """Take no connections from the shared sockets until start-up work is done: set
    when a sibling already serves (a restarted worker), so that the kernel hands every
    connection to a worker that can answer it rather than to one answering 503."""

    @property
    def runs_housekeeping(self) -> bool:
        """Periodic work that must run once per server (the reaper) runs in worker 0."""
        return self.index == 0


def encode_config(config: Config) -> bytes:
    """The hand-over bytes for ``config``."""
    payload = pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > MAX_CONFIG_BYTES:
        raise HandOverError(f"configuration too large to hand over ({len(payload)} bytes)")
    return _LENGTH.pack(len(payload)) + payload


def read_config(stream: BinaryIO) -> Config:
    """Read one hand-over from ``stream`` (blocking), as :func:`encode_config` wrote it."""
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise HandOverError("no configuration on stdin (a worker is started by its supervisor)")
    (length,) = _LENGTH.unpack(head)
    if length > MAX_CONFIG_BYTES:
        raise HandOverError(f"configuration of {length} bytes announced: too large")
    payload = stream.read(length)
    if len(payload) != length:
        raise HandOverError("configuration cut short on stdin")
    config = pickle.loads(payload)
    if not isinstance(config, Config):
        raise HandOverError(f"stdin held a {type(config).__name__}, not a configuration")
    return config
