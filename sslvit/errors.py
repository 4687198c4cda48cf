"""The errors every ``sslvit`` command turns into an exit status.

:class:`InputError` is the one error type for "the user's input is wrong": a key, value, file,
spec, sample or checkpoint the user gave cannot be used; its message (or a subclass's:
:class:`sslvit.config.ConfigError`, :class:`sslvit.checkpoint.CheckpointError`, ...) names what is
wrong and, where it can, what would work. Every subcommand reports it as one line,
``sslvit CMD: error: MESSAGE``, and exits with status 2; code that calls the library catches it as
a ``ValueError``.

:class:`StorageError` stops a run whose outputs no longer fit on its disk: one line, exit
:data:`EXIT_STORAGE`. :class:`Preempted` ends a run that was asked to stop (SIGTERM, SIGINT) after its checkpoint is
written: the command says where and exits with :data:`EXIT_PREEMPTED`.
"""

from __future__ import annotations

EXIT_INPUT = 2
EXIT_STORAGE = 74  # EX_IOERR: an output could not be written (a full disk); the last good checkpoint stays
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; run it again with train.resume=latest


class InputError(ValueError):
    """The user's input is wrong; the message names the bad key, value, file, spec or sample."""


class StorageError(OSError):
    """An output could not be written (no space left); the message names the directory, the bytes
    needed and free, and the last good checkpoint. Nothing partial is left behind."""


class Preempted(Exception):
    """A run stopped on SIGTERM / SIGINT at a step boundary; the message says where its checkpoint is."""
