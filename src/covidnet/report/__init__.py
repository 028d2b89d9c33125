"""Reports a person can read: one self-contained ``index.html`` with PNG figures beside it.

* ``figures``: the figures (confusion matrix, ROC, reliability, errors, severity scatter), matplotlib
  ``Figure`` objects only, never pyplot;
* ``html``: the stylesheet, escaped tables and ``write_page``, the one page writer every report uses (the
  audit's page is ``covidnet.audit.page``, the study's ``covidnet.study.page``);
* ``evaluation``: the report of an evaluation, classification (``write_report``) or severity and risk
  (``write_task_report``).
"""

from .evaluation import CLASSIFICATION_FIGURES, METRICS, write_report, write_task_report
from .figures import DPI, plot_confusion, plot_errors, plot_reliability, plot_roc, plot_severity_scatter
from .html import CSS, html_table, write_page

__all__ = [
    "CLASSIFICATION_FIGURES",
    "CSS",
    "DPI",
    "METRICS",
    "html_table",
    "plot_confusion",
    "plot_errors",
    "plot_reliability",
    "plot_roc",
    "plot_severity_scatter",
    "write_page",
    "write_report",
    "write_task_report",
]
