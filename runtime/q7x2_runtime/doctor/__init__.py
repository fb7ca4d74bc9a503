"""`q7x2-runtime doctor`: the versions inside the image that must match, against the pins the
image was built with (/usr/local/share/q7x2/pins.json, written by the Dockerfile templates)."""
