"""The ``lafs`` command line (an application of lafs_core, data_tools and flows): one sub-command per stage."""
