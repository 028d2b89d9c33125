"""Real DICOM files for tests, written with pydicom: a complete dataset (file meta, SOP UIDs, image
pixel module) around an array, saved with the 128-byte preamble as scanners write them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset, uid


def dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements) -> Dataset:
    """A complete DICOM dataset (file meta, SOP UIDs, image pixel module) around ``arr``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid.generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def save_dicom(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)  # 128-byte preamble + "DICM" + file meta
    return path
