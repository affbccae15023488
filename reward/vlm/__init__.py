"""OpenAI-compatible VLM client, judge and critic."""
