"""Stage entry points: one function per pipeline stage, called by the stage's notebook.

Each reads the validated parameters, does the work through the library, writes its outputs under an
output root (see ``robustlib.pipeline.paths``) and returns what the notebook displays.
"""
