"""sandboxd: fresh, strictly limited Linux containers for tests and notebook code."""
__version__ = "0.1.0"
