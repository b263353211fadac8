"""Kinetics from state time series (MD or latent dynamics): state lifetimes and mean first-passage times.

``states`` is an integer array (frames, trajectories), one column per trajectory, frames
``interval`` apart; a 1-D array is one trajectory.
"""

from __future__ import annotations

import numpy as np

from latf_openmm.errors import LatfError


def _columns(states: np.ndarray, n_states: int) -> np.ndarray:
    states = np.asarray(states)
    states = states[:, None] if states.ndim == 1 else states
    if states.ndim != 2 or not np.issubdtype(states.dtype, np.integer):
        raise LatfError(f"states must be integers of shape (frames, trajectories), got {states.dtype} {states.shape}")
    if states.size and not (0 <= states.min() and states.max() < n_states):
        raise LatfError(f"states must lie in 0 … {n_states - 1}")
    return states


def state_lifetimes(states: np.ndarray, n_states: int, interval: float) -> tuple[np.ndarray, np.ndarray]:
    """Return each state's mean residence time and its number of complete visits.

    A visit is a run of contiguous frames in one state; the censored first and last visit
    of each trajectory are left out. A state without a complete visit has lifetime 0.
    """
    totals, counts = np.zeros(n_states), np.zeros(n_states)
    for column in _columns(states, n_states).T:
        change = np.flatnonzero(np.diff(column)) + 1
        bounds = np.concatenate([[0], change, [len(column)]])
        lengths, labels = np.diff(bounds)[1:-1], column[bounds[1:-2]]
        np.add.at(totals, labels, lengths)
        np.add.at(counts, labels, 1)
    return interval * totals / np.maximum(counts, 1), counts


def mean_first_passage_times(states: np.ndarray, n_states: int, interval: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean first-passage times (n_states, n_states) and the passages behind each.

    MFPT(i → j) is the mean time from each entry into state i (a frame in i whose previous
    frame was not) to the first later frame in j. Entries after which the trajectory never
    reaches j are left out (censored), and a pair without a passage is NaN; the diagonal is NaN.
    """
    states = _columns(states, n_states)
    n_frames = len(states)
    frame = np.arange(n_frames)[:, None]
    entries = np.zeros(states.shape, dtype=bool)
    entries[1:] = states[1:] != states[:-1]
    times, counts = np.zeros((n_states, n_states)), np.zeros((n_states, n_states))
    for target in range(n_states):
        at_target = np.where(states == target, frame, n_frames)
        next_at_target = np.minimum.accumulate(at_target[::-1], axis=0)[::-1]  # first frame ≥ t in the target
        reached = entries & (states != target) & (next_at_target < n_frames)
        np.add.at(times[:, target], states[reached], (next_at_target - frame)[reached])
        np.add.at(counts[:, target], states[reached], 1)
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, interval * times / counts, np.nan), counts


def nan_as_none(matrix: np.ndarray, digits: int = 6) -> list:
    """Return an array as nested lists of rounded floats for JSON, NaN (no passage) as None."""
    array = np.asarray(matrix, dtype=float)
    if array.ndim == 0:
        return None if not np.isfinite(array) else round(float(array), digits)
    return [nan_as_none(row, digits) for row in array]
