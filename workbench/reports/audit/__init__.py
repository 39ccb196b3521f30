"""Audit a grader on any labelled image set: labels, grading run, figures, report.

``read_labels`` reads the CSV (ours, IDRiD, APTOS or EyePACS style), ``grade_images`` runs the grader
exactly as ``drwb evaluate`` does on the IDRiD layout, ``audit_figures`` computes what an auditor signs
off on, and ``write_audit_report`` writes the JSON and the self-contained HTML.
"""

from workbench.reports.audit.figures import audit_figures
from workbench.reports.audit.labels import LabelledImage, LabelsError, read_labels
from workbench.reports.audit.report import write_audit_report
from workbench.reports.audit.run import GradedImage, grade_images, run_audit

__all__ = [
    "GradedImage",
    "LabelledImage",
    "LabelsError",
    "audit_figures",
    "grade_images",
    "read_labels",
    "run_audit",
    "write_audit_report",
]
