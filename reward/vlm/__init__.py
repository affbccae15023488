"""OpenAI-compatible VLM backends (vLLM, OpenAI, Gemini's OpenAI endpoint).

- ``config.VLMConfig``: endpoints, model, key variable name, retries, concurrency, video mode.
- ``client.VLMClient``: async requests with retries/backoff, round-robin, bounded concurrency,
  fault counting (``client.FaultCounter``), payload limit, sync bridge.
- ``judge.VLMJudge``: VideoPhy-2-style scores + Accept/Reject verdict (``reward.base.Judge``).
- ``critic.VLMCritic``: multimodal chain-of-thought prompt refinement (``reward.base.Critic``).

Submodules are imported explicitly (``from reward.vlm.judge import VLMJudge``) so that
loading the configuration does not import the openai package.
"""
