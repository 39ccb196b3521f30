"""Analysis layer: image I/O, quality, IDRiD readers, synthetic fundi, explainers, metrics and the UIs.

Importing it makes the process offline-safe before gradio or huggingface_hub can be imported
(see ``workbench.offline``).
"""

from workbench import offline as _offline

_offline.apply()
