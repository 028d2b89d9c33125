"""Metrics, each computed by scikit-learn or SciPy where they have it; what is written here is what
they do not offer: the bootstrap over **patients**, the expected calibration error and reliability
bins, and the assembly of each task's evaluation JSON.

* ``bootstrap``: the patient bootstrap and how an interval is written;
* ``classification``: sensitivity, PPV, NPV, specificity, F1, one-vs-rest AUC, within-source AUCs;
* ``calibration``: ECE, reliability bins, temperature scaling, operating points;
* ``regression``: severity scores (MAE, RMSE, R², Spearman);
* ``ordinal``: risk bins (accuracy, macro F1, mean absolute bin error);
* ``segmentation``: lung masks (Dice, IoU, HD95; both lungs and each).
"""
