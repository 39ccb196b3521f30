"""What differs between the three models: card, data, loss and validation metrics, one class per task.

``TASKS`` maps the name used on the command line (``drwb train grader``) to its task class, so the
training loop in ``training/train.py`` stays free of if-chains over model kinds. The base class and the
registry live in ``_base`` (which imports no task); importing this package registers every task.
"""

from __future__ import annotations

from training.tasks import disc, fovea, grader, localizer, segmenter  # noqa: F401  (registers the tasks)
from training.tasks._base import TASKS, TrainTask, register_task

__all__ = ["TASKS", "TrainTask", "register_task"]
