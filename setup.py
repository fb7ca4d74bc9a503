"""Package discovery only; all metadata lives in pyproject.toml.

templates/ and images/ hold no Python, so setuptools' package finder would not ship them;
they are listed here as data packages of q7x2_deploy (mapped in pyproject's package-dir).
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(".", include=["q7x2_deploy", "q7x2_deploy.*"]),
        *find_packages("runtime", include=["q7x2_runtime", "q7x2_runtime.*"]),
        "q7x2_deploy.templates",
        "q7x2_deploy.images",
    ]
)
