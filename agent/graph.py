"""The loop, as a LangGraph state machine — the whole of phyloop in one picture:

    START → baseline ─┐         (round 0: the base model on held-out prompts)
                      ▼
    ┌──► plan → refine → generate → judge → train → evaluate → checkpoint ──┐
    └──────────────────────── more rounds? ◄───────────────────────────────┘
                                                  │ no
                                                  ▼
                                                 END

Each node is a method of :class:`agent.nodes.Nodes`. The graph is checkpointed after every
node by LangGraph's SQLite checkpointer (``runs/<run>/graph.sqlite``), so ``agent run
--resume RUN`` continues from the last finished node; the nodes themselves are idempotent,
so the node that was interrupted simply runs again.
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from agent.failpoints import failpoint
from agent.nodes import LoopState, Nodes

STAGES = ("plan", "refine", "generate", "judge", "train", "evaluate", "checkpoint")


def build_graph(nodes: Nodes, checkpointer=None):
    g = StateGraph(LoopState)
    g.add_node("baseline", _with_failpoints("baseline", nodes.baseline))
    for stage in STAGES:
        g.add_node(stage, _with_failpoints(stage, getattr(nodes, stage)))

    g.add_edge(START, "baseline")
    g.add_conditional_edges("baseline", nodes.more_rounds, {"plan": "plan", "done": END})
    for a, b in zip(STAGES, STAGES[1:]):
        g.add_edge(a, b)
    g.add_conditional_edges("checkpoint", nodes.more_rounds, {"plan": "plan", "done": END})
    return g.compile(checkpointer=checkpointer)


def _with_failpoints(name: str, fn):
    """Wrap a node so crash tests can kill the process just before or just after its work."""
    def node(state: LoopState) -> LoopState:
        k = 0 if name == "baseline" else state["round"] + 1 if name == "plan" else state["current"]
        failpoint(f"enter:{name}", k)
        out = fn(state)
        failpoint(f"exit:{name}", k)
        return out

    node.__name__ = name
    return node


def recursion_limit(rounds: int) -> int:
    """LangGraph counts every node run as a superstep; a round is len(STAGES) of them."""
    return 10 + (rounds + 1) * (len(STAGES) + 1)
