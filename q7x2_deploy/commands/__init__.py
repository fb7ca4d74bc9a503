"""One module per q7x2-deploy command."""
