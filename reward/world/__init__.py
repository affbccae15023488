"""The built-in physics world: the shared physics description, the simulator, the analytic judge and the rule-based critic."""
