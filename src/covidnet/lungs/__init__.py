"""Lung fields, beyond training (``covidnet train --task segmentation``, ``covidnet lungs train``): a segmenter's
evaluation and its masks for raw images (a research tool, not a diagnostic device).

* ``evaluate``: ``covidnet lungs eval``, Dice, IoU and HD95 with patient-bootstrap intervals
  (``covidnet.metrics.segmentation``) and an HTML page of the worst cases; ``covidnet lungs predict``,
  mask PNGs for raw images;
* ``figures``: that page's figures and the mask overlays.

A segmenter is loaded like any model (``covidnet.load``: a checkpoint or its ONNX export; ``data build --lungs``
is handed one, opened by its caller, ``covidnet.data.build.lungs``); masks as data are
``covidnet.data.lungmasks``; a lung-field classifier is the registered model ``models/lung_field.py``.
"""
