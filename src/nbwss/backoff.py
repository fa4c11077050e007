"""Jittered exponential backoff for reconnecting a server group, as a pure object.

The supervisor retries a group at once when its connection drops, then waits longer
after each round in which no endpoint of the group answered, up to
`connectionInfo.period` (the vendor's only retry cadence). A round in which an endpoint
refused the token (`valid: false`) starts the doubling from `refused_first_s` rather
than `first_s`: a refused token does not heal in milliseconds, and each try costs the
app a TLS handshake and a token check. Jitter spreads the retries of many groups that
lost their endpoint at the same moment. The random source is passed in, so tests pin
the delays without a clock or a sleep.

The schedule, n failed rounds in a row: wait `first * 2**(n-1)`, at most `cap_s`, times
a jitter in [0.5, 1]; `first` is 0.05 s, or 2 s when the round met a refused token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST_DELAY_S = 0.05
REFUSED_FIRST_DELAY_S = 2.0
FACTOR = 2.0


@dataclass(slots=True)
class Backoff:
    """Delays `first_s * factor**n` capped at `cap_s`, each scaled by a jitter in [0.5, 1]."""

    cap_s: float
    first_s: float = FIRST_DELAY_S
    factor: float = FACTOR
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    refused_first_s: float = REFUSED_FIRST_DELAY_S

    def next_delay(self, *, refused: bool = False) -> float:
        """The wait before the next round; each call counts one failed round (`refused`:
        an endpoint refused the token in it)."""
        first = max(self.first_s, self.refused_first_s) if refused else self.first_s
        base = min(self.cap_s, first * self.factor**self.failures)
        self.failures = min(self.failures + 1, 64)  # far past the cap; keeps floats finite
        return base * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        """A connection held long enough: the next failure starts from `first_s` again."""
        self.failures = 0
