"""Benchmarks behind `miras bench`: `ops` times every distinct memory op against its recurrent reference."""
