"""Fuzzing helpers and targets: raw milter packets (rawmilter), header invariants (invariants),
mutated milter sessions (protocol), fuzz targets (targets), the ``make fuzz`` runner (run) and
its libFuzzer entry point (atheris_main).  Figures of the last run: RESULTS.md."""
