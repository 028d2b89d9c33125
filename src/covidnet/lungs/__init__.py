"""Lung fields: segmenting the lungs of a chest radiograph (a research tool, not a diagnostic device).

* ``covidnet.data.lungmasks``: masks as data (``data build --lung-masks NAME=DIR``), stored beside the
  images in the contract's geometry;
* ``train``: ``covidnet lungs train``, a segmenter from the registry (``models/segment.py``) trained on a
  build's annotated masks;
* ``infer``: the one way stored pixels become lung logits in PyTorch (``lung_logits``: eval, predict,
  ``data build --lungs``, training's validation, and the graph ``covidnet export`` writes);
* ``segmenter``: the interface of every lung segmenter (probabilities and masks of stored pixels), and
  ``OnnxLungModel``, an exported segmenter on ONNX Runtime (no torch);
* ``fill``: ``open_segmenter`` (a ``.pt`` or an ``.onnx``) and the masks of ``data build --lungs``;
* ``evaluate``: ``covidnet lungs eval``, Dice, IoU and HD95 with patient-bootstrap intervals
  (``covidnet.metrics.segmentation``) and an HTML page of the worst cases; ``covidnet lungs predict``,
  mask PNGs for raw images.
"""
