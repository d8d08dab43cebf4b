"""After-sales e-mail automation for online sellers."""

__version__ = "0.1.0"
