"""Training: distributed set-up, schedules, checkpoints, tracking and the stage loops."""
