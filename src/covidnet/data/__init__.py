"""Datasets: from public source folders to the preprocessed store that training reads.

``sources/`` (one reader per layout) -> ``records`` -> ``build`` (merge, dedup, patient-level split,
report) -> ``preprocess`` (the one pixel path) -> ``store`` (uint8 images, memory-mapped, with an
index); ``imageio`` decodes files, ``severity`` joins targets beyond the label, ``synth`` draws the
phantoms the tests and the demo use.
"""
