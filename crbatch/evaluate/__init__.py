"""Per-epoch validation of the training (full val sets, data-vs-MC K-S, plots) and the history figures.

``evaluate_epoch`` is the training loop's default per-epoch hook (crbatch.train.loop); ``plot_history``
redraws the history figures from the history dict after every epoch. Matplotlib is imported only when
a figure is drawn.
"""

from .epoch import evaluate_epoch, jet_pt_window_from_attrs
from .history import plot_history

__all__ = ["evaluate_epoch", "jet_pt_window_from_attrs", "plot_history"]
