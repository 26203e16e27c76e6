"""sandboxd's benchmark suite against the other runtimes: ``python bench/run.py --help``."""
