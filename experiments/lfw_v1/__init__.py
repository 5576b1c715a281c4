"""The lfw-v1 comparison: scratch, DINO-grid, LAFS and LAFS-online on LFW View-1 (protocols.md 1 and 2)."""
