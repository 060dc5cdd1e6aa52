"""Scripts that print figures (never run as tests); ``benchmarks.study`` is importable."""
