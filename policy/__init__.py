"""phyloop policy: generators, LoRA, objectives and the trainer (no LangGraph, no SQL)."""
