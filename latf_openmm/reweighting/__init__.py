"""Reweighting: per-frame weights that turn biased or multi-temperature data into equilibrium averages.

- One biased run (:func:`run_weights`): well-tempered metadynamics and OPES frames weigh
  exp((V − c(t))/k_BT), with c(t) from the run's COLVAR, from the start that maximizes
  their effective sample size (:func:`without_transient`); a restraint's frames exp(V/k_BT).
  :func:`bias_weights` is the same for the rows of any COLVAR (PLUMED's too).
- Umbrella windows (:func:`umbrella_weights`): MBAR (pymbar) over the windows' restraint
  energies, evaluated from each frame's CV in COLVAR.
- Several temperatures (:func:`temperature_estimate`): MBAR over the reduced potentials
  E/k_BT of every run at every temperature, solved once, then weights at any temperature.
- Runs at several temperatures under several fixed biases (:func:`multistate_estimate`):
  one MBAR over every (temperature, bias) pair, each bias evaluated at every frame; the two
  above are its special cases.

Weights are returned normalized to sum to the number of frames, one array per run;
:func:`effective_sample_size` says how many independent frames they are worth.
"""

from latf_openmm.reweighting.data import load_training_data
from latf_openmm.reweighting.weights import (
    EquilibriumEstimate,
    MultistateEstimate,
    bias_weights,
    effective_sample_size,
    multistate_estimate,
    restraint_energy,
    run_weights,
    statistical_inefficiency,
    temperature_estimate,
    umbrella_weights,
    without_transient,
)

__all__ = [
    "EquilibriumEstimate",
    "MultistateEstimate",
    "bias_weights",
    "effective_sample_size",
    "load_training_data",
    "multistate_estimate",
    "restraint_energy",
    "run_weights",
    "statistical_inefficiency",
    "temperature_estimate",
    "umbrella_weights",
    "without_transient",
]
