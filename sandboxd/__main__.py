"""``python -m sandboxd ...`` is ``sbx ...``."""
from .cli.main import main

main()
