"""Spreading one configuration's accounts over its replicas (issue 34): the rules, without I/O.

Replicas of one configuration (the same queue and account list: ``configuration``) beat in
the store's registry every ``BEAT_EVERY`` s; the ones seen within ``ALIVE_WITHIN`` s count.
Each then aims at ``fair_share`` accounts: the accounts over the replicas, the oldest ones one
more when they do not divide evenly, so the spread is even within one account (20 over 3: 7,
7, 6) and the shares add up to the accounts.

- **Taking.** Under its share a replica queues at the server for the accounts it does not
  hold (``may_queue``); at its share or over it, it only *tries* them now and then, so an
  account nobody holds (its holder died, and the registry has not noticed yet) is still taken
  within a try, but an account released to move is granted to a replica that queued for it.
- **Moving.** A replica over its share gives one account back at a time (``to_move``): it
  drains that account's worker (the send in hand finishes and is recorded, nothing more is
  taken; unacked jobs go back to the queue), releases the lease cleanly, and waits until
  another replica holds it (or ``MOVE_WITHIN`` s passed) before it moves the next. An account
  never moves with a send in flight: the drain waits for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

BEAT_EVERY = 1.0  # seconds between a replica's beats in the registry
ALIVE_WITHIN = 5.0  # a replica whose last beat is older does not count
MOVE_WITHIN = 10.0  # a moved account not taken elsewhere by then: move the next anyway
LOOK_EVERY = 0.1  # while a move is under way: how often to look whether it was taken


def configuration(queue: str, accounts: Sequence[str]) -> str:
    """Which replicas share the accounts: the same job queue and the same account names."""
    text = queue + "\n" + "\n".join(sorted(accounts))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def fair_share(accounts: int, replicas: int, rank: int = 0) -> int:
    """The accounts the replica of ``rank`` (0: the oldest alive) aims at: all of them alone,
    else the accounts over the replicas, one more for the oldest of them when they do not
    divide evenly (20 over 3: 7, 7, 6), so the shares add up to the accounts and a replica
    that joins takes its accounts from the others without shifting theirs."""
    if replicas <= 1:
        return accounts
    base, extra = divmod(accounts, replicas)
    return base + (1 if rank < extra else 0)


def may_queue(held: int, share: int) -> bool:
    """Whether a replica holding ``held`` accounts queues for one more (else it only tries)."""
    return held < share


def to_move(held: Sequence[str], share: int, *, moving: bool, busy: Collection[str]) -> str | None:
    """The account to give back now, if any: none while a move is under way or at the share;
    else the last held (by name) without a send in flight (``busy``), so the choice is
    stable and a busy account waits for the next look."""
    if moving or len(held) <= share:
        return None
    idle = [account for account in sorted(held) if account not in busy]
    return idle[-1] if idle else None


def move_done(*, taken: bool, back: bool, since: float, now: float) -> bool:
    """A move is over when another replica holds the account (``taken``), when this one took
    it back (``back``: nobody queued for it when it was released), or after ``MOVE_WITHIN``."""
    return taken or back or now - since >= MOVE_WITHIN


__all__ = [
    "ALIVE_WITHIN",
    "BEAT_EVERY",
    "LOOK_EVERY",
    "MOVE_WITHIN",
    "configuration",
    "fair_share",
    "may_queue",
    "move_done",
    "to_move",
]
