"""Real text corpora that install offline (used by benchmarks, tests, eval and training)."""
