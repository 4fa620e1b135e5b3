from __future__ import annotations

import os

from hypothesis import settings

# Property tests run a fixed number of examples with no per-example deadline (the first
# call of a build pays for thread start-up); CI uses the same profile.
settings.register_profile("ntkflow", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("NTKFLOW_HYPOTHESIS_PROFILE", "ntkflow"))
