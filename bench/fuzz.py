"""Fuzz the parsers that take outside input, far past what CI runs (issue 8, item 2).

    .venv/bin/python -m bench fuzz                      # 10,000 cases per target
    .venv/bin/python -m bench fuzz --cases 50000 --seconds 600 --targets messages
    .venv/bin/python bench/fuzz.py --java               # + properties against real Java

Targets, each fed by the hypothesis strategies of `tests/strategies.py` (arbitrary and
near-valid input: wrong types, huge values, deep nesting, invalid UTF-8, duplicate
keys, cuts):
- `messages`: `messages.decode` raises only a one-line DecodeError; what it accepts
  encodes again as valid UTF-8 and decodes to the same message.
- `details`: `endpoints.parse_details` raises only a DetailsError with the guide's message.
- `properties`: `parse_properties` + `settings_from_text` raise only a one-line ConfigError.
- `redact`: after `logs.redact` and the JSON renderer, no registered secret is left and
  the event is one line.
- `properties-java` (with `--java`, needs a JDK): our reader gives the same pairs as
  `java.util.Properties.load` on every generated text.

A case slower than `--slow-ms` counts as a failure (a hang in the making). Per target the
run stops at `--cases` or `--seconds`, whichever comes first. Prints cases run and
failures per target, with the first examples of each kind of failure; exit 1 if any.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import structlog  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests.strategies import (  # noqa: E402
    arbitrary_details,
    arbitrary_frames,
    json_scalars,
    properties_texts,
    settings_texts,
)

from nbwss.endpoints import parse_details  # noqa: E402
from nbwss.errors import (  # noqa: E402
    MSG_INCORRECT_URL,
    MSG_INVALID_JSON,
    MSG_ONLY_WSS,
    ConfigError,
    DecodeError,
    DetailsError,
)
from nbwss.logs import redact, register_secret  # noqa: E402
from nbwss.messages import decode, encode  # noqa: E402
from nbwss.properties import parse_properties, settings_from_text  # noqa: E402

Problem = str | None  # None: the case passed; else the kind of failure, then ": detail"
MAX_FRAME = 1 << 20
SECRET = "fuzz-secret-7d1e0c55b7a94f0e"


# -- checks: each returns None when the code under test behaved ---------------------------


def check_messages(data: bytes | str) -> Problem:
    try:
        message = decode(data, MAX_FRAME)
    except DecodeError as error:
        return "multi-line DecodeError" if "\n" in str(error) else None
    text = encode(message)
    text.encode("utf-8")  # raises (and is reported) if a text frame could not be sent
    if decode(text) != message:
        return "re-decoded message differs"
    return None


def check_details(data: bytes | str) -> Problem:
    try:
        parse_details(data)
    except DetailsError as error:
        if not str(error).startswith((MSG_INVALID_JSON, MSG_ONLY_WSS, MSG_INCORRECT_URL)):
            return f"DetailsError without the guide's message: {error}"
        return "multi-line DetailsError" if "\n" in str(error) else None
    return None


def check_properties(text: str) -> Problem:
    try:
        parse_properties(text)
        settings_from_text(text)
    except ConfigError as error:
        return "multi-line ConfigError" if "\n" in str(error) else None
    return None


_RENDER = structlog.processors.JSONRenderer()


def check_redact(fields: dict[str, Any]) -> Problem:
    rendered = _RENDER(None, "info", redact(None, "info", {"event": "fuzz", **fields}))
    assert isinstance(rendered, str)
    if SECRET in rendered:
        return "secret left in a log line"
    return "multi-line log event" if "\n" in rendered else None


def redact_fields() -> st.SearchStrategy[dict[str, Any]]:
    with_secret = st.text(max_size=4).map(lambda t: f"{t}{SECRET}{t}")
    leaf = st.one_of(json_scalars, with_secret, st.just(ValueError(f"refused {SECRET}")),
                     st.just(SECRET.encode()))
    keys = st.one_of(json_scalars, with_secret)  # what json.dumps accepts as keys
    values = st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.tuples(children, children),
            st.dictionaries(keys, children, max_size=3),
        ),
        max_leaves=15,
    )
    names = st.sampled_from(["token", "url", "headers", "error", "data", "host", "group"])
    return st.dictionaries(names, values, max_size=5)


# -- the runner ---------------------------------------------------------------------------


class _Stop(BaseException):
    """Ends a hypothesis run early (time or case budget reached); not a test failure."""


@dataclass
class Tally:
    cases: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    slowest_ms: float = 0.0
    seconds: float = 0.0

    def record(self, problem: str, value: Any) -> None:
        kind = problem.split(": ", 1)[0]
        self.failures[kind] += 1
        shown = repr(value)
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(shown if len(shown) < 300 else shown[:297] + "...")


def run_target(
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], Problem],
    cases: int,
    seconds: float,
    slow_ms: float,
    seed: int,
) -> Tally:
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds

    def one(value: Any) -> None:
        if tally.cases >= cases or time.monotonic() > deadline:
            raise _Stop
        case_started = time.perf_counter()
        try:
            problem = check(value)
        except Exception as exc:  # the point of fuzzing: anything unexpected is a finding
            problem = f"{type(exc).__name__}: {exc}"
        took_ms = (time.perf_counter() - case_started) * 1000
        tally.slowest_ms = max(tally.slowest_ms, took_ms)
        if problem is None and took_ms > slow_ms:
            problem = f"slower than {slow_ms:.0f} ms"
        if problem is not None:
            tally.record(problem, value)
        tally.cases += 1

    run = 0
    while tally.cases < cases and time.monotonic() < deadline:
        test = given(strategy)(one)
        test = settings(
            max_examples=cases - tally.cases,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(test)
        try:
            hypothesis_seed(seed + run)(test)()
        except _Stop:
            break
        run += 1
    tally.seconds = time.monotonic() - started
    return tally


# -- properties against real Java ----------------------------------------------------------

_JAVA_READER = """
import java.io.*; import java.util.*;
public class PropertiesOracle {
  public static void main(String[] args) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
    for (String line; (line = in.readLine()) != null; ) {
      Properties props = new Properties();
      try { props.load(new StringReader(new String(unhex(line), "UTF-8"))); }
      catch (IllegalArgumentException e) { System.out.println("ERROR"); continue; }
      List<String> out = new ArrayList<>();
      for (String key : new TreeSet<>(props.stringPropertyNames()))
        out.add(hex(key) + "=" + hex(props.getProperty(key)));
      System.out.println(String.join(",", out));
    }
  }
  static byte[] unhex(String s) {
    byte[] b = new byte[s.length() / 2];
    for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(s.substring(2*i, 2*i+2), 16);
    return b;
  }
  static String hex(String s) throws Exception {
    StringBuilder sb = new StringBuilder();
    for (byte x : s.getBytes("UTF-8")) sb.append(String.format("%02x", x));
    return sb.toString();
  }
}
"""


def _ours(text: str) -> str:
    try:
        pairs = {entry.key: entry.value for entry in parse_properties(text)}
    except ConfigError:
        return "ERROR"

    def hexed(value: str) -> str:
        return value.encode("utf-8", "surrogatepass").hex()

    def java_order(key: str) -> bytes:  # Java's TreeSet orders by UTF-16 code unit
        return key.encode("utf-16-be", "surrogatepass")

    return ",".join(f"{hexed(k)}={hexed(pairs[k])}" for k in sorted(pairs, key=java_order))


def run_java_differential(cases: int, seconds: float, seed: int) -> Tally | str:
    """Collect texts, run them all through one JVM, compare pair by pair."""
    if not (shutil.which("javac") and shutil.which("java")):
        return "skipped: no JDK (javac and java) on PATH"
    texts: list[str] = []

    def collect(text: str) -> Problem:
        try:
            text.encode("utf-8")  # Java would read an unpaired surrogate as '?'
        except UnicodeEncodeError:
            return None
        texts.append(text)
        return None

    tally = run_target(properties_texts(), collect, cases, seconds, 1e9, seed)
    with tempfile.TemporaryDirectory() as workdir:
        source = Path(workdir) / "PropertiesOracle.java"
        source.write_text(_JAVA_READER)
        subprocess.run(["javac", str(source)], check=True, capture_output=True)
        answers = subprocess.run(
            ["java", "-cp", workdir, "PropertiesOracle"],
            input="".join(text.encode().hex() + "\n" for text in texts),
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    for text, java in zip(texts, answers, strict=True):
        ours = _ours(text)
        # Java prints an unpaired surrogate in a value as '?' (3f); ours keeps it.
        if ours != java and not ("eda" in ours or "edb" in ours):
            tally.record("differs from java.util.Properties", text)
    return tally


# -- command line -------------------------------------------------------------------------

TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy[Any]], Callable[[Any], Problem]]] = {
    "messages": (arbitrary_frames, check_messages),
    "details": (arbitrary_details, check_details),
    "properties": (lambda: st.one_of(properties_texts(), settings_texts()), check_properties),
    "redact": (redact_fields, check_redact),
}


def report(name: str, tally: Tally) -> None:
    failures = sum(tally.failures.values())
    print(
        f"{name:16} cases {tally.cases:>7,}  failures {failures:>4}  "
        f"time {tally.seconds:6.1f} s  slowest case {tally.slowest_ms:7.1f} ms",
        flush=True,
    )
    for kind, count in tally.failures.most_common():
        print(f"    {count:>5} x {kind}")
        for example in tally.examples[kind]:
            print(f"          e.g. {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target")
    parser.add_argument("--seconds", type=float, default=300.0, help="time bound per target")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, of: {', '.join(TARGETS)}")
    parser.add_argument("--slow-ms", type=float, default=2000.0,
                        help="a case slower than this is a failure")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--java", action="store_true",
                        help="also compare the properties reader with java.util.Properties")
    args = parser.parse_args(argv)
    register_secret(SECRET)
    print(f"seed {args.seed}; up to {args.cases:,} cases or {args.seconds:.0f} s per target")
    failed = False
    for name in [n.strip() for n in args.targets.split(",") if n.strip()]:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}")
        make_strategy, check = TARGETS[name]
        tally = run_target(make_strategy(), check, args.cases, args.seconds, args.slow_ms,
                           args.seed)
        report(name, tally)
        failed = failed or bool(tally.failures)
    if args.java:
        outcome = run_java_differential(args.cases, args.seconds, args.seed)
        if isinstance(outcome, str):
            print(f"{'properties-java':16} {outcome}")
        else:
            report("properties-java", outcome)
            failed = failed or bool(outcome.failures)
    print("result:", "FAILURES FOUND" if failed else "no failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
