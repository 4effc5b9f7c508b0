"""The experiment layer: sweeps, paired statistics, reports and figures.

Built on the adapter's public API only (load, calibrate, compress, save,
evaluate); nothing below imports from here.  ``llm-adapter sweep`` and
``llm-adapter report`` are its command-line front ends
(:mod:`llm_adapter.cli.sweep`, :mod:`llm_adapter.cli.report`).

Modules, in import order: :mod:`.paired` (paired bootstrap of per-window and
per-item scores), :mod:`.budgets` (equal-budget tables and Pareto figures),
:mod:`.sweep` (configurations, points, the resumable results file),
:mod:`.report` (Markdown, CSV and figures from results files).
"""
