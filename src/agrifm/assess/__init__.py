"""Map accuracy and class area with confidence intervals from a stratified reference sample
(Olofsson et al. 2014): ``agrifm sample-design`` draws the sample, ``agrifm assess`` estimates.

Modules: :mod:`~agrifm.assess.estimators` (the estimators, pure numpy),
:mod:`~agrifm.assess.maps` (the class map as strata), :mod:`~agrifm.assess.design` (allocation and
draw), :mod:`~agrifm.assess.reference` (the labelled sample), :mod:`~agrifm.assess.report`
(JSON/MD/PNG), :mod:`~agrifm.assess.cli` (``assess``), :mod:`~agrifm.assess.example` (the demo's).
"""

from __future__ import annotations

from agrifm.assess.cli import assess_map
from agrifm.assess.design import allocate, design_sample
from agrifm.assess.estimators import Estimates, stratified_estimates
from agrifm.assess.example import demo_example

__all__ = ["assess_map", "allocate", "design_sample", "Estimates", "stratified_estimates", "demo_example"]
