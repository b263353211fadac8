"""User-facing errors."""


class LatfError(Exception):
    """An error caused by the user's input; its message says what to fix.

    The command line prints it as one line and exits with status 2.
    """


def blew_up(step: int, timestep_ps: float) -> LatfError:
    """Return the error for a simulation whose energy or positions stopped being finite by ``step``."""
    return LatfError(
        f"simulation blew up by step {step} (t = {step * timestep_ps:g} ps): "
        f"energy or positions are not finite; reduce the timestep (now {timestep_ps:g} ps) "
        "or the bias, or check the starting structure"
    )
