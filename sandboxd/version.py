"""sandboxd's version. A module of its own so the client, the daemon and ``sbx`` read it
without importing the package's ``__init__``, whose ``%load_ext sandboxd`` hook imports
the IPython extension (a client of this package): no import circle through it."""
__version__ = "0.1.0"
