"""Evaluation harness: does the uncertainty mean something on the user's own labelled data?

The paper's evaluation (Kushibar et al., MICCAI 2022; see ``docs/method.md``) reproduced for any model
that follows the contract: per-case metrics and image-level scores (``metrics``, ``scores``), the
quality-control curve (``qc``), statistics (``stats``), synthetic acquisition shifts (``shifts``),
the run over a dataset (``runner``), the report (``report``), AULA threshold calibration
(``calibration``) and the baseline exporters (``baselines``). Importing this package is cheap:
scipy, matplotlib and tqdm are imported only inside the functions that need them.
"""
