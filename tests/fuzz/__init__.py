"""Fuzzing helpers and targets: header invariants (invariants), raw packets from tests.kit.rawmilter,
mutated milter sessions (protocol), fuzz targets (targets), the ``make fuzz`` runner (run) and
its libFuzzer entry point (atheris_main).  Figures of the last run: RESULTS.md."""
