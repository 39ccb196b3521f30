"""Gradio user interface (a face: widgets and wiring only, no tensor maths)."""
