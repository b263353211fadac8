"""Make openmm-torch's plugins load even when openmm was imported before torch.

openmm-torch's plugins link libnvrtc.so.12, which resolves only once torch has loaded its
CUDA libraries. If the user imported openmm before latf_openmm (hence before torch),
OpenMM failed to load them; load them again now that torch is here.
"""

import os
import re

import openmm
import torch  # noqa: F401

for _failure in openmm.Platform.getPluginLoadFailures():
    _library = re.match(r"Error loading library (\S+libOpenMMTorch\w+\.so):", _failure)
    if _library and os.path.isfile(_library.group(1)):
        try:
            openmm.Platform.loadPluginLibrary(_library.group(1))
        except openmm.OpenMMException:
            pass  # e.g. the CUDA or OpenCL plugin on a machine without that runtime
