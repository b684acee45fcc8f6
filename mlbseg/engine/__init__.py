"""Task-agnostic training machinery: optimizer, schedule, checkpoints, EMA, logging, run folders."""
