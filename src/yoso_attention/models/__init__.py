from .yoso import *  # noqa: F401,F403
from .yoso import __all__  # noqa: F401
