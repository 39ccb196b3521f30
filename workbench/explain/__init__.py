"""Why the grader decided: the explainers (Grad-CAM family, Captum attributions, the grader's attention),
how each map is scored (faithfulness, lesion overlap, randomisation) and the explain-bench over a split."""
