import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home():
    """Statistics of tiny models go to a throwaway cache, not the user's."""
    saved = os.environ.get("EDITSCOPE_HOME")
    with tempfile.TemporaryDirectory() as home:
        os.environ["EDITSCOPE_HOME"] = home
        yield
    if saved is None:
        os.environ.pop("EDITSCOPE_HOME", None)
    else:
        os.environ["EDITSCOPE_HOME"] = saved
