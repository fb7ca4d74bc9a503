"""`report`: one run directory read back, plotted, and written as a self-contained HTML page."""
