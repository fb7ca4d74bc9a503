"""build-image's stage progress: Dockerfile steps and wheelhouse packages counted from the tools'
own lines, which are printed either way."""

from __future__ import annotations

import io

from rich.console import Console

from q7x2_deploy.commands.build_progress import StageProgress


def test_build_steps_and_wheelhouse_packages_are_counted_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with StageProgress(console, "building x:1", kind="build") as build:
        for line in ["Step 1/3 : FROM base", " ---> 1234", "Step 2/3 : RUN pip install", "Step 3/3 : CMD x"]:
            build.feed(line)
    assert (build.done, build.total) == (3, 3)
    with StageProgress(console, "wheelhouse for cpu", kind="wheelhouse") as wh:
        for line in ["Collecting torch==2.13.0", "  Downloading torch-2.13.0.whl (190 MB)", "Collecting numpy",
                     "Saved ./numpy.whl"]:
            wh.feed(line)
    assert (wh.done, wh.total) == (2, None)
    assert "Step 2/3 : RUN pip install" in out.getvalue() and "Saved ./numpy.whl" in out.getvalue()


def test_without_a_terminal_the_lines_are_the_record() -> None:
    out = io.StringIO()
    with StageProgress(Console(file=out, force_terminal=False, width=200), "building x:1", kind="build") as build:
        build.feed("Step 1/2 : FROM base")
    assert out.getvalue() == "Step 1/2 : FROM base\n" and build.done == 1
