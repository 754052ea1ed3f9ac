"""Shared fixtures, registered for every test module (none imports another test module):

- the loopback RTSP camera simulator (`camsim`, `camsim_clips`; see tests/camsim) and the
  quirk camera (`quirks`, per module);
- a store with real recorder threads (`rig`; tests/recording_rig.py, with `wait_for`);
- the HTTP API over a store with users (`api`, `users_template`) and over the session footage
  (`footage_template`, `footage_api`; tests/api_rig.py);
- the clips a scripted camera plays to a recorder on a simulated clock (`scripted_clips`;
  tests/scripted.py).
"""

from tests.api_rig import api, footage_api, footage_template, users_template
from tests.camsim.fixtures import camsim, camsim_clips, quirks
from tests.recording_rig import rig
from tests.scripted import scripted_clips

__all__ = [
    "api",
    "camsim",
    "camsim_clips",
    "footage_api",
    "footage_template",
    "quirks",
    "rig",
    "scripted_clips",
    "users_template",
]
