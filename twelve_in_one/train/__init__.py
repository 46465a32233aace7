"""Training: the per-task objective and steps, optimizer, schedule and DSG, sharding, the loop."""
