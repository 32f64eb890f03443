"""Errors the CLI turns into one line on stderr and exit code 2."""


class PlannerError(Exception):
    """Bad input: an unreadable model, a dynamic shape, a malformed option."""


class InfeasibleBudget(PlannerError):
    """A budget no plan can meet; the message says which op needs how much."""
