"""``python -m sandboxd ...`` is ``sbx ...``."""
from .cli_run import main

main()
