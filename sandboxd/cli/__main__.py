"""``python -m sandboxd.cli``: the click app, without the fast path."""
from .commands import main

main()
