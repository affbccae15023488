"""The built-in physics world: shared physics, simulator, analytic judge and rule-based critic.

- :mod:`.physics` — the world's constants and laws (one description for simulator and judge)
- :mod:`.simulator` — seeded scenes, exact kinematics, rendering, prompts at three detail levels
- :mod:`.intent` — what a prompt asks for, read from its text
- :mod:`.tracker` / :mod:`.motion` — finding objects in any video, fitting their motion
- :mod:`.judge` — :class:`PhysicsJudge` (``reward.base.Judge``)
- :mod:`.critic` — :class:`RuleCritic` (``reward.base.Critic``)
- :mod:`.corrupt` — physically wrong videos for calibration
- :mod:`.tools` — render a scene to a file, judge a video file (used by the CLI)
"""

from .critic import RuleCritic
from .judge import PhysicsJudge

__all__ = ["PhysicsJudge", "RuleCritic"]
