"""A job's records on the operator's machine: its run directory (.q7x2/runs/<job>: attempts,
host logs, events, results) and the sink that writes the merged log lines there. Below both the
executor and the scheduler backends, which each keep their runs here."""
