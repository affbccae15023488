"""phyloop reward: judges, critics and metric rewards (trains nothing)."""
