"""The web dashboard (`[orchestrator] http`): a page, its live feed and its actions, served
from the master's one loop (an edge like control/: it reaches the fleet only through the
control commands)."""
