"""Chat helpers behind :mod:`thinchat.engine`: history truncation, the terminal chat loop."""
