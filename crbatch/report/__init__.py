"""Reports: markdown + static HTML pages of plots and tables."""
