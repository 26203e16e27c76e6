"""``sbx``: Docker's command line for sandboxd, one module per command group.

Commands, flags, output formats and exit codes follow ``docker``'s: ``sbx run``'s status is
the container's; a daemon error prints ``Error response from daemon: ...`` (``sbx: Error
response from daemon: ...`` for run and create, as Docker prefixes its name there only)
and exits 125 (126/127 when the command cannot be executed / found); an error the client
finds itself prints ``sbx: ...`` and never claims the daemon's label; a bad flag exits 125.
``docs/cli.md`` lists every command.

- :mod:`.main`: the ``sbx`` console script; runs plain ``run``/``create`` lines itself
  (without click: importing it alone costs ~20 ms, more than the container) and hands
  every other line to the click app (:mod:`.commands`).
- :mod:`.run`: run/create's flags as one table (the click options are built from it)
  and the two commands without click.
- :mod:`.common`: what every command shares without click: Docker's error report and
  exit statuses, the daemon connection, attached I/O, progress bars.
- :mod:`.app`: the click plumbing: the root group ``sbx``, lazily built commands, the
  client, rows and ``inspect`` printing shared by the groups.
- :mod:`.containers`, :mod:`.images`, :mod:`.system`, :mod:`.networks`,
  :mod:`.notebook`: the commands, by what they act on; :mod:`.commands` puts them
  together in Docker's order.

This package's ``__init__`` imports nothing: the console script's start-up is the budget.
"""
