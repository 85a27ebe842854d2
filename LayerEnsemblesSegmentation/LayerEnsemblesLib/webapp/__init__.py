"""The web review app (``layer-ensembles review``) on trame-slicer: the only package that imports trame.

Installed with the Slicer extension for completeness but never imported inside Slicer; it drives the same
review controller as the Qt module (``LayerEnsemblesLib.review``).
"""
