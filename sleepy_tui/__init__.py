"""sleepy-tui: a small local code model learns Rust from its own mistakes."""

__version__ = "0.1.0"
