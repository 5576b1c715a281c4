"""The ``lafs`` command line: one sub-command per stage."""
