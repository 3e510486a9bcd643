"""Benchmarks and the fault-injection soak of ocrbatch (`make bench`, `make soak`); not shipped.

`bench.run` prints the performance table, `bench.soak` runs the soak and checks its invariants
(`bench.soak_checks`). Both start the worker, the emulator and helpers as child processes or
servers on loopback and stop them on exit, also on failure.
"""
