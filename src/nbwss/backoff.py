"""Jittered exponential backoff for reconnecting a server group, as a pure object.

The supervisor retries a group at once when its connection drops, then waits longer
after each round in which no endpoint of the group answered, up to
`connectionInfo.period` (the vendor's only retry cadence). Jitter spreads the retries of
many groups that lost their endpoint at the same moment. The random source is passed
in, so tests pin the delays without a clock or a sleep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST_DELAY_S = 0.05
FACTOR = 2.0


@dataclass(slots=True)
class Backoff:
    """Delays `first_s * factor**n` capped at `cap_s`, each scaled by a jitter in [0.5, 1]."""

    cap_s: float
    first_s: float = FIRST_DELAY_S
    factor: float = FACTOR
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """The wait before the next round; each call counts one failed round."""
        base = min(self.cap_s, self.first_s * self.factor**self.failures)
        self.failures = min(self.failures + 1, 64)  # far past the cap; keeps floats finite
        return base * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        """A connection held long enough: the next failure starts from `first_s` again."""
        self.failures = 0
