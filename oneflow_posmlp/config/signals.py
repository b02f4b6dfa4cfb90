"""``train.stop_signals``: signal names -> numbers, for the trainer's stop handlers (``engine/stop.py``) and the
loader workers that ignore those signals (``data/loader.py``)."""
import signal

from .validate import ConfigError

CATCHABLE = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGINT", "SIGXCPU")  # what schedulers send before a kill


def resolve_signals(names):
    """``train.stop_signals`` (``["SIGTERM", "SIGUSR1"]``; ``TERM`` works too) -> signal numbers, or a ConfigError
    naming the bad entry."""
    nums = []
    for name in names:
        full = str(name).upper() if str(name).upper().startswith("SIG") else "SIG" + str(name).upper()
        if full not in CATCHABLE or not hasattr(signal, full):
            raise ConfigError(f"train.stop_signals: {name!r} is not a signal a run can stop on; use names from "
                              f"{', '.join(CATCHABLE)} (or [] for none)")
        nums.append(int(getattr(signal, full)))
    return sorted(set(nums))
