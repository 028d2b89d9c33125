"""covidnet: COVID-Net for chest X-rays in PyTorch — a research toolkit, not a diagnostic device.

The public API; the ``covidnet`` command is a thin layer over it. Names are imported on first use
(PEP 562), so ``import covidnet`` and the parts that need no torch (reading images, building datasets
in worker processes, and later the ONNX runtime) stay light.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("covidnet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

# The one wording of what this is not, on every page, report, service response and export.
DISCLAIMER = "Research tool, not a diagnosis: not for diagnostic use."

_API = {
    "CovidnetError": "covidnet.errors",
    "create_model": "covidnet.models",
    "get_spec": "covidnet.models",
    "list_models": "covidnet.models",
    "register_model": "covidnet.models",
    "profile_model": "covidnet.profile",
    "build_dataset": "covidnet.data.build",
    "BuildConfig": "covidnet.data.build",
    "open_store": "covidnet.data.store",
    "load_image": "covidnet.contract",
    "preprocess": "covidnet.contract",
    "read_image": "covidnet.imageio",
    "write_phantom_dataset": "covidnet.data.synth",
    "SynthConfig": "covidnet.data.synth",
    "train": "covidnet.train",
    "TrainConfig": "covidnet.train",
    "evaluate_checkpoint": "covidnet.evaluate",
    "EvalConfig": "covidnet.evaluate",
    "calibrate_checkpoint": "covidnet.evaluate",
    "CalibrateConfig": "covidnet.evaluate",
    "predict_paths": "covidnet.predict",
    "PredictConfig": "covidnet.predict",
    "ProfileConfig": "covidnet.profile",
    "StoreDataset": "covidnet.tasks.dataset",
    "export_model": "covidnet.export",
    "ExportConfig": "covidnet.export",
    "create_app": "covidnet.serve",
    "ServeConfig": "covidnet.serve",
    "Contract": "covidnet.contract",
    "LoadedModel": "covidnet.runtime",
    "load": "covidnet.runtime",
    "TrainingInterrupted": "covidnet.train",
    "check_training": "covidnet.train",
    "write_severity_file": "covidnet.data.synth",
    "CamExplainer": "covidnet.explain",
    "run_audit": "covidnet.audit",
    "evaluate_lungs": "covidnet.lungs.evaluate",
    "LungsEvalConfig": "covidnet.lungs.evaluate",
    "predict_lungs": "covidnet.lungs.evaluate",
    "LungsPredictConfig": "covidnet.lungs.evaluate",
    "run_study": "covidnet.study",
    "StudyConfig": "covidnet.study",
}


def __getattr__(name: str):
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'covidnet' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])


__all__ = ["DISCLAIMER", "__version__", *_API]
