"""The sealer: every few seconds, in each server process, chain the events committed since the
last round and sign a checkpoint whenever the last one is old enough.

Several processes may run it at once: sealing and checkpointing each take the chain lock
(services/audit/chain.py) and skip a round another process is already doing.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from services.audit import chain, checkpoints
from services.audit.checkpoints import CheckpointSigner
from services.kit.background import PeriodicThread
from services.kit.uow import transaction


class Sealer:
    """Seals the chain every `interval_seconds` on a background thread, and signs a checkpoint
    whenever the last one is `checkpoint_interval_seconds` old.

    A round that fails is logged and made again next round: events are safe in the table
    meanwhile, and sealing and signing are both safe to repeat.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        interval_seconds: float,
        signer: CheckpointSigner | None = None,
        checkpoint_interval_seconds: float = 3600.0,
    ) -> None:
        self._sessions = sessions
        self._signer = signer
        self._checkpoint_interval = checkpoint_interval_seconds
        self._last_full = 0.0
        self._thread = PeriodicThread("audit-sealer", self.run_once, interval_seconds)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def run_once(self) -> None:
        """One round: a bounded pass (a full one every few minutes), then a checkpoint if due."""
        full = time.monotonic() - self._last_full >= chain.SEAL_FULL_PASS_SECONDS
        chain.seal_all(self._sessions, window=None if full else chain.SEAL_WINDOW)
        if full:
            self._last_full = time.monotonic()
        if self._signer is not None:
            # A checkpoint states what is already sealed and audited: bookkeeping, no event.
            with transaction(self._sessions) as session:
                checkpoints.write_checkpoint(
                    session, self._signer, interval_seconds=self._checkpoint_interval
                )
