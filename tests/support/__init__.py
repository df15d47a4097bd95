"""Helpers for the test suite: real databases, real registry processes, a cuttable TCP proxy."""
