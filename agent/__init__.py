"""phyloop agent: the LangGraph loop, the CLI, the dashboard, planning and refinement."""
