"""Benchmarks and long runs; `python -m bench` runs every module that sets `BENCHMARK = True`.

A benchmark module exposes `main(argv: list[str] | None = None) -> int` and prints its
figures; with no arguments it runs its default sizes. Long runs (the soak) leave
`BENCHMARK` unset and are started by name: `python -m bench soak --seconds 600`.
"""
