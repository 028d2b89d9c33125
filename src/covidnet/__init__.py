"""covidnet: COVID-Net for chest X-rays in PyTorch — a research toolkit, not a diagnostic device.

The public API; the ``covidnet`` command is a thin layer over it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("covidnet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from .errors import CovidnetError  # noqa: E402
from .models import create_model, get_spec, list_models, register_model  # noqa: E402
from .profile import profile_model  # noqa: E402

__all__ = ["CovidnetError", "__version__", "create_model", "get_spec", "list_models", "profile_model", "register_model"]
