"""The ``mawstron`` command line."""
